"""Schema migrations on SQLite and PostgreSQL: fresh databases at head, a library made before
Alembic upgraded in place with its data, one upgrader at a time, all or nothing, newer refused."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, Table, create_engine, inspect, select, text
from sqlalchemy.exc import OperationalError

from storage import SCHEMA_VERSION, SchemaMismatchError, StorageConfig, open_library
from storage.migrate import HEAD_REVISION, alembic_config, current_revision
from storage.models import Base

V1_DUMP = Path(__file__).parent / "data" / "v1-library.sql"
V1_TABLES = ("documents", "pages", "blocks", "chunks")


def _rows(engine: Engine, table: str, columns: list[str] | None = None) -> list[tuple]:
    reflected = Table(table, MetaData(), autoload_with=engine)
    cols = [reflected.c[name] for name in columns] if columns else list(reflected.c)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*cols).order_by(*reflected.primary_key.columns))]


def _v1_source(tmp_path: Path) -> Engine:
    """A SQLite database holding the library that Folio wrote at schema version 1."""
    path = tmp_path / "v1-source.db"
    if not path.exists():
        _load_dump(path)
    return create_engine(f"sqlite:///{path}")


def _load_dump(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(V1_DUMP.read_text())


def _make_v1_library(tmp_path: Path, url: str | None) -> StorageConfig:
    """The library of V1_DUMP as Folio 1 left it: its tables, meta schema_version 1, no
    alembic_version. On SQLite the dump itself; on PostgreSQL revision 0001 (the same tables)
    with the dump's rows copied in."""
    config = StorageConfig(library=tmp_path / "lib", database_url=url)
    if url is None:
        config.library.mkdir()
        _load_dump(config.library / "folio.db")
        return config
    source = _v1_source(tmp_path)
    target = create_engine(url)
    with target.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.execute(text("DROP TABLE alembic_version"))
        for name in V1_TABLES:
            rows = [dict(r._mapping) for r in source.connect().execute(select(Table(name, MetaData(), autoload_with=source)))]
            conn.execute(Table(name, MetaData(), autoload_with=conn).insert(), rows)
        for name in ("pages", "blocks"):  # explicit ids leave the sequences behind
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), (SELECT max(id) FROM {name}))"))
    target.dispose()
    source.dispose()
    return config


def test_revisions_are_numbered_by_schema_version() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_current_head() == HEAD_REVISION == f"{SCHEMA_VERSION:04d}"
    assert [s.revision for s in reversed(list(script.walk_revisions()))] == ["0001", "0002", "0003", "0004", "0005"]


def test_migrations_build_the_tables_of_the_models(database_url: str | None, tmp_path: Path) -> None:
    engine = create_engine(database_url or f"sqlite:///{tmp_path / 'migrated.db'}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.scalar(text("SELECT value FROM meta WHERE key = 'schema_version'")) == str(SCHEMA_VERSION)
    engine.dispose()


def test_a_fresh_database_is_stamped_at_head(database_url: str | None, tmp_path: Path) -> None:
    library = open_library(StorageConfig(library=tmp_path / "lib", database_url=database_url))
    assert current_revision(library.engine) == HEAD_REVISION
    with library.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    library.close()


def test_a_library_made_before_alembic_is_upgraded_in_place(database_url: str | None, tmp_path: Path) -> None:
    config = _make_v1_library(tmp_path, database_url)
    source = _v1_source(tmp_path)
    columns = {name: [c["name"] for c in inspect(source).get_columns(name)] for name in V1_TABLES}
    before = {name: _rows(source, name) for name in V1_TABLES}
    assert len(before["chunks"]) == 7 and len(before["documents"]) == 2

    library = open_library(config)
    assert current_revision(library.engine) == HEAD_REVISION
    for name in V1_TABLES:
        assert _rows(library.engine, name, columns[name]) == before[name], name
    assert [owner for (owner,) in _rows(library.engine, "documents", ["owner_id"])] == [None, None]
    assert _rows(library.engine, "users") == []
    assert _rows(library.engine, "block_vectors") == []  # filled lazily, or by --reindex
    with library.engine.connect() as conn:
        assert conn.scalar(text("SELECT value FROM meta WHERE key = 'schema_version'")) == str(SCHEMA_VERSION)
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        if library.engine.dialect.name == "sqlite":
            assert list(conn.execute(text("PRAGMA foreign_key_check"))) == []
            assert conn.scalar(text("PRAGMA integrity_check")) == "ok"
    library.close()
    source.dispose()


def test_block_vectors_of_an_upgraded_library_go_with_their_document(database_url: str | None, tmp_path: Path) -> None:
    library = open_library(_make_v1_library(tmp_path, database_url))
    with library.engine.begin() as conn:
        doc_id, block_id = conn.execute(text("SELECT doc_id, id FROM blocks ORDER BY id")).first()
        conn.execute(
            text("INSERT INTO block_vectors (block_id, encoder, dim, text_hash, vector) VALUES (:b, 'e', 1, 'h', :v)"),
            {"b": block_id, "v": b"\x00\x00\x80\x3f"},
        )
    assert len(_rows(library.engine, "block_vectors")) == 1
    with library.engine.begin() as conn:
        conn.execute(text("DELETE FROM documents WHERE id = :d"), {"d": doc_id})
    assert _rows(library.engine, "block_vectors") == []
    library.close()


def test_four_openers_of_an_old_library_at_once_upgrade_it_once(database_url: str | None, tmp_path: Path) -> None:
    """Threads with an engine each: the lock is per connection, as between processes."""
    config = _make_v1_library(tmp_path, database_url)
    start = threading.Barrier(4)
    outcomes: list[object] = []

    def open_it() -> None:
        start.wait()
        try:
            open_library(config).close()
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            outcomes.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["ok"] * 4
    library = open_library(config)
    with library.engine.connect() as conn:
        assert list(conn.execute(text("SELECT version_num FROM alembic_version"))) == [(HEAD_REVISION,)]
    assert len(_rows(library.engine, "chunks")) == 7
    library.close()


def _locked_probe(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """`storage.migrate._probe` answers "database is locked" `times` times, then works."""
    import storage.migrate as migrate

    real, calls = migrate._probe, []
    monkeypatch.setattr(migrate, "_LOCKED_FIRST_WAIT_S", 0.0)

    def probe(conn):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) <= times:
            raise OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))
        return real(conn)

    monkeypatch.setattr(migrate, "_probe", probe)
    return calls


def test_a_busy_database_at_open_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite can answer "database is locked" without waiting (a stale WAL snapshot): opening
    tries again instead of failing, and upgrades the old library once it gets through."""
    config = _make_v1_library(tmp_path, None)
    calls = _locked_probe(monkeypatch, times=2)
    library = open_library(config)
    assert len(calls) == 4  # locked twice, then the probe and the re-probe under the lock
    assert current_revision(library.engine) == HEAD_REVISION
    library.close()


def test_a_database_locked_for_good_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _make_v1_library(tmp_path, None)
    calls = _locked_probe(monkeypatch, times=100)
    with pytest.raises(SchemaMismatchError, match="database is locked .another program holds it"):
        open_library(config)
    assert len(calls) == 6


def test_a_failed_upgrade_leaves_the_old_version_whole(database_url: str | None, tmp_path: Path) -> None:
    config = _make_v1_library(tmp_path, database_url)
    url = config.resolved_database_url()
    engine = create_engine(url)
    with engine.begin() as conn:  # in the way of revision 0002's CREATE TABLE users
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
    with pytest.raises(SchemaMismatchError, match="users"):
        open_library(config)
    tables = set(inspect(engine).get_table_names())
    assert "alembic_version" not in tables  # even the stamp of 0001 was rolled back
    assert "owner_id" not in {c["name"] for c in inspect(engine).get_columns("documents")}
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE users"))
    engine.dispose()
    library = open_library(config)
    assert current_revision(library.engine) == HEAD_REVISION
    assert len(_rows(library.engine, "blocks")) == 18
    library.close()


@pytest.mark.parametrize("revision", [f"{SCHEMA_VERSION + 1:04d}", "1f2e3d4c5b6a"])
def test_a_newer_database_is_refused_in_one_line(database_url: str | None, tmp_path: Path, revision: str) -> None:
    if database_url:  # the test server trusts any password; the message must not show it
        database_url = database_url.replace("folio@", "folio:s3cret@")
    config = StorageConfig(library=tmp_path / "lib", database_url=database_url)
    library = open_library(config)
    with library.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    library.close()
    with pytest.raises(SchemaMismatchError, match="newer than this Folio") as caught:
        open_library(config)
    assert "\n" not in str(caught.value) and "s3cret" not in str(caught.value)
