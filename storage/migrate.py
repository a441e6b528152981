"""Schema versions of the library database: create, stamp, upgrade (Alembic, no alembic.ini).

A fresh database gets the tables of `storage.models` and is stamped at the newest revision. An
older one is upgraded in place, in one transaction that a lock keeps to one process at a time
(SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an advisory lock, and its DDL is transactional), so a
crash leaves the old version whole and a second process waits, then finds nothing to do. A
library made before Alembic (schema_version 1 in `meta`, no `alembic_version`) is stamped at
revision 0001 first. A database newer than this code is refused.

NOTE: upgrades are automatic because each revision so far only adds (tables, nullable columns,
indexes), so an upgraded database loses nothing; the cost is that an older Folio then refuses
it. A revision that rewrites data should make this ask first (a `folio migrate` command).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from storage.models import SCHEMA_VERSION, Base, Meta

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
HEAD_REVISION = f"{SCHEMA_VERSION:04d}"  # revision ids are the schema version, zero-padded
# NOTE: any constant works; it only has to be the same in every Folio process.
_PG_LOCK_KEY = 0x466F6C696F  # "Folio"


class SchemaMismatchError(RuntimeError):
    """The database cannot be used by this Folio (newer, inconsistent, or not a library)."""


@dataclass(frozen=True)
class _State:
    tables: frozenset[str]
    revision: str | None  # alembic_version
    version: int | None  # meta's schema_version

    @property
    def fresh(self) -> bool:
        return not self.tables & {"alembic_version", "meta", "documents"}

    @property
    def current(self) -> bool:
        return self.revision == HEAD_REVISION and self.version == SCHEMA_VERSION


def alembic_config(connection: Connection | None = None):  # noqa: ANN201 - alembic.config.Config
    """An Alembic config for the packaged migrations, running on `connection` when given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None: fresh, or made before Alembic)."""
    with engine.connect() as conn:
        return _probe(conn).revision


def ensure_schema(engine: Engine) -> None:
    """Create, stamp or upgrade the database so it holds the newest schema.

    Raises:
        SchemaMismatchError: the database is newer than this Folio, inconsistent, unreadable,
            or holds tables that are not a Folio library's.
    """
    where = engine.url.render_as_string(hide_password=True)
    for attempt in range(_LOCKED_ATTEMPTS):
        try:
            _ensure_schema_once(engine, where)
            return
        except _Locked as locked:
            if attempt + 1 == _LOCKED_ATTEMPTS:
                raise SchemaMismatchError(
                    f"cannot read the library database at {where}: {locked.orig} (another "
                    "program holds it; try again when it is done)"
                ) from locked
            time.sleep(min(_LOCKED_FIRST_WAIT_S * 2**attempt, 2.0))


# NOTE: SQLite's busy handler waits for most locks (busy_timeout), but some contention returns
# SQLITE_BUSY at once (a WAL snapshot that went stale, a WAL file being recovered); seen when
# several processes open an old library together on a loaded machine. Every attempt re-probes,
# and a failed upgrade rolled back, so trying again is safe.
_LOCKED_ATTEMPTS = 6
_LOCKED_FIRST_WAIT_S = 0.1


class _Locked(Exception):
    """SQLite answered "database is locked"; `orig` is the driver's error."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__(str(orig))
        self.orig = orig


def _is_locked(exc: OperationalError) -> bool:
    return "database is locked" in str(exc.orig)


def _ensure_schema_once(engine: Engine, where: str) -> None:
    try:
        with engine.connect() as conn:
            state = _probe(conn)
        if state.current:
            return
        _refuse(state, where)
        with _exclusive(engine) as conn:
            state = _probe(conn)  # another process may have done it while we waited
            if state.current:
                return
            _refuse(state, where)
            try:
                _bring_to_head(conn, state, where)
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                if isinstance(exc, OperationalError) and _is_locked(exc):
                    raise
                raise SchemaMismatchError(
                    f"upgrading the library database {where} to schema version {SCHEMA_VERSION} "
                    f"failed, nothing was changed: {exc.orig}"
                ) from exc
    except (OperationalError, ProgrammingError) as exc:
        if isinstance(exc, OperationalError) and _is_locked(exc):
            raise _Locked(exc.orig) from exc
        raise SchemaMismatchError(f"cannot read the library database at {where}: {exc.orig}") from exc


def _probe(conn: Connection) -> _State:
    tables = frozenset(inspect(conn).get_table_names())
    revision = (
        conn.scalar(text("SELECT version_num FROM alembic_version")) if "alembic_version" in tables else None
    )
    version = None
    if "meta" in tables:
        value = conn.scalar(select(Meta.value).where(Meta.key == "schema_version"))
        version = int(value) if value is not None else None
    return _State(tables, revision, version)


def _refuse(state: _State, where: str) -> None:
    """Raise for a database this Folio must not touch."""
    # NOTE: a revision id that is not a number comes from no Folio we know of: a newer one.
    unknown = state.revision is not None and not (state.revision.isdigit() and int(state.revision) <= SCHEMA_VERSION)
    if unknown or (state.version or 0) > SCHEMA_VERSION:
        raise SchemaMismatchError(
            f"library database {where} has schema version {state.version} (revision "
            f"{state.revision}), newer than this Folio's {SCHEMA_VERSION}: upgrade Folio to open it"
        )
    if state.fresh:
        return
    if state.version is None:
        raise SchemaMismatchError(
            f"database {where} has tables but no Folio schema version: not a Folio library "
            "(give Folio a database of its own)"
        )
    if state.revision is not None and int(state.revision) != state.version:
        raise SchemaMismatchError(
            f"library database {where} is inconsistent: schema version {state.version} in meta, "
            f"revision {state.revision} in alembic_version"
        )
    if state.revision is None and state.version != 1:
        raise SchemaMismatchError(
            f"library database {where} has schema version {state.version} without a migration "
            "record: only version 1 predates them"
        )


@contextmanager
def _exclusive(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other Folio process migrates beside; commits at
    the end, rolls back on an error."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # NOTE: pysqlite starts transactions only before DML, so DDL would autocommit one
            # statement at a time; an explicit BEGIN IMMEDIATE makes the whole upgrade one
            # transaction and takes the write lock up front (others wait on busy_timeout).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        yield conn
        conn.commit()


def _bring_to_head(conn: Connection, state: _State, where: str) -> None:
    from alembic import command

    config = alembic_config(conn)
    if state.fresh:
        Base.metadata.create_all(conn)
        conn.execute(insert(Meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
        command.stamp(config, HEAD_REVISION)
        logger.info("created the library database %s at schema version %d", where, SCHEMA_VERSION)
        return
    if state.revision is None:
        command.stamp(config, "0001")
    logger.warning(
        "upgrading the library database %s from schema version %d to %d",
        where, state.version, SCHEMA_VERSION,
    )  # fmt: skip
    command.upgrade(config, HEAD_REVISION)
