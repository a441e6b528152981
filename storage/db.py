"""Open a library: the database engine (SQLite WAL by default, or PostgreSQL), its schema
(created or upgraded by `storage.migrate`), and its folders."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from storage.config import StorageConfig
from storage.migrate import SchemaMismatchError as SchemaMismatchError  # raised by open_library
from storage.migrate import ensure_schema
from storage.models import Meta

logger = logging.getLogger(__name__)


SOURCE_PDF = "source.pdf"  # file name of a document's PDF copy inside its assets folder
INGEST_LOCK = ".ingest.lock"  # in the library folder: held (shared) while an ingest runs


class FileLock:
    """An advisory lock on a file (`fcntl.flock`), between processes and between threads.

    Each `acquire` opens the file anew, so two holders in one process exclude each other like
    two processes do. Not reentrant. The lock goes with the process: a killed holder frees it.

    Args:
        path: the lock file (created if missing; its parent must exist).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._guard = threading.Lock()

    def acquire(self, *, shared: bool = False, blocking: bool = True) -> bool:
        """Take the lock (shared: with other shared holders); False if `blocking` is off and
        it is held the other way."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        with self._guard:
            if self._fd is not None:
                os.close(fd)
                raise RuntimeError(f"{self.path}: this FileLock is already held (not reentrant)")
            self._fd = fd
        return True

    def release(self) -> None:
        """Let go of the lock (closing the file frees it)."""
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class Library:
    """An open library: engine, session factory and the folders beside the database.

    The folders (page images, search index, models) are in the library folder whatever the
    database: with PostgreSQL shared by several machines each keeps its own folder for now.
    """

    root: Path
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def assets_dir(self) -> Path:
        return self.root / "assets"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def ingest_lock(self) -> FileLock:
        """The lock an ingest holds shared while it writes; `folio check --repair` takes it
        alone before removing the asset folders of unfinished documents."""
        return FileLock(self.root / INGEST_LOCK)

    def source_pdf(self, doc_id: str) -> Path:
        """Where the library keeps its copy of a document's PDF (when ingest keeps one)."""
        return self.assets_dir / doc_id / SOURCE_PDF

    def asset_path(self, relative: str) -> Path:
        """Absolute path of an asset stored as a path relative to the library."""
        return self.root / relative

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI types
    cursor = dbapi_connection.cursor()
    # NOTE: WAL lets readers (ask, web) run while an ingest writes; busy_timeout makes a second
    # writer wait instead of failing with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _postgres_session(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI types
    # NOTE: `created` is a timestamp without time zone holding UTC, as SQLite stores it;
    # PostgreSQL would convert an aware datetime to the server's zone, so the session is UTC.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


def open_library(config: StorageConfig, *, create: bool = True) -> Library:
    """Open (and by default create) the library described by `config`.

    An older database is upgraded in place (see `storage.migrate`).

    Raises:
        SchemaMismatchError: the database is newer than this Folio, or unreadable.
        FileNotFoundError: `create` is False and the library does not exist.
    """
    root = config.library.expanduser().resolve()
    url = config.resolved_database_url()
    is_sqlite = url.startswith("sqlite")
    if is_sqlite and not (root / "folio.db").exists() and not create:
        raise FileNotFoundError(f"no Folio library at {root}: run `folio ingest` first")
    root.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _postgres_session)
    try:
        ensure_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    library = Library(root=root, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
    library.assets_dir.mkdir(exist_ok=True)
    return library


def schema_version(library: Library) -> int:
    """The schema version stored in the library."""
    with library.sessions() as session:
        return int(session.scalar(select(Meta.value).where(Meta.key == "schema_version")))
