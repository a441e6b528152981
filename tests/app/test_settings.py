import json
from pathlib import Path

import pytest

from app.settings import Settings


def test_defaults_and_env(monkeypatch) -> None:
    monkeypatch.setenv("FOLIO_LIBRARY", "/data/lib")
    monkeypatch.setenv("FOLIO_PARSE__OCR", "never")
    s = Settings.load()
    assert s.library == Path("/data/lib") and s.parse.ocr == "never"
    assert s.storage.resolved_database_url().endswith("/data/lib/folio.db")


def test_precedence_file_then_env_then_overrides(monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"parse": {"ocr": "always", "ocr_dpi": 150}, "library": "from-file"}))
    monkeypatch.setenv("FOLIO_PARSE__OCR", "never")
    s = Settings.load(path)
    assert s.parse.ocr == "never" and s.parse.ocr_dpi == 150 and s.library == Path("from-file")
    s = Settings.load(path, parse={"ocr": "auto"})
    assert s.parse.ocr == "auto" and s.parse.ocr_dpi == 150


def test_presets_and_unknown_names() -> None:
    assert Settings.load("quality").parse.parser == "layout"
    with pytest.raises(ValueError, match="presets: quality"):
        Settings.load("nope")


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError):
        Settings.load(parse={"ocr_mode": "auto"})
