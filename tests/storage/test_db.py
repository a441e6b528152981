from pathlib import Path

import pytest
from sqlalchemy import text

from storage import SCHEMA_VERSION, SchemaMismatchError, StorageConfig, open_library
from storage.db import schema_version


def test_new_library_uses_sqlite_wal_and_records_schema(tmp_path: Path) -> None:
    library = open_library(StorageConfig(library=tmp_path / "lib"))
    with library.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert schema_version(library) == SCHEMA_VERSION
    assert (tmp_path / "lib" / "folio.db").is_file()
    assert library.assets_dir.is_dir()
    library.close()


def test_schema_mismatch_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    config = StorageConfig(library=tmp_path)
    library = open_library(config)
    with library.engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = '999' WHERE key = 'schema_version'"))
    library.close()
    with pytest.raises(SchemaMismatchError, match="schema version 999"):
        open_library(config)


def test_missing_library_without_create(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folio ingest"):
        open_library(StorageConfig(library=tmp_path / "nothing"), create=False)


def test_database_url_setting_overrides_the_library_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    library = open_library(StorageConfig(library=tmp_path / "lib", database_url=url))
    assert (tmp_path / "elsewhere.db").is_file()
    assert not (tmp_path / "lib" / "folio.db").exists()
    library.close()
