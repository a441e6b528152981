"""`folio ingest --tables / --figure-ocr / --layout-detector` reach the parse settings (issue 23,
point 7)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import app.cli as cli
from app.cli import app

runner = CliRunner()


class _Stop(Exception):
    pass


def _overrides(monkeypatch: pytest.MonkeyPatch, args: list[str], tmp_path: Path) -> dict:
    seen: dict = {}

    def fake_open_folio(**overrides: object) -> None:
        seen.update(overrides)
        raise _Stop

    monkeypatch.setattr(cli, "open_folio", fake_open_folio)
    result = runner.invoke(
        app, ["--library", str(tmp_path / "lib"), "ingest", str(tmp_path), *args]
    )
    assert isinstance(result.exception, _Stop), result.output
    return seen


def test_figure_flags_reach_the_parse_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = _overrides(monkeypatch, ["--figure-ocr", "tesseract", "--no-layout-detector"], tmp_path)
    assert seen["parse"] == {"figure_ocr": "tesseract", "layout_detector": False}
    assert _overrides(monkeypatch, ["--figure-ocr", "off"], tmp_path)["parse"] == {
        "figure_ocr": "off"
    }
    assert "parse" not in _overrides(monkeypatch, [], tmp_path)
    assert _overrides(monkeypatch, ["--tables", "spans"], tmp_path)["parse"] == {"tables": "spans"}


def test_unknown_figure_ocr_engine_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["--library", str(tmp_path / "lib"), "ingest", str(tmp_path), "--figure-ocr", "easyocr"],
    )
    assert result.exit_code != 0
    assert "rapidocr" in result.output and "Traceback" not in result.output
