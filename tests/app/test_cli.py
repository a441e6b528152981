import json
import logging
import shutil
from pathlib import Path

from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()


def test_ingest_docs_delete_round_trip(tmp_path: Path, sample_pdf: Path) -> None:
    lib = str(tmp_path / "lib")
    result = runner.invoke(app, ["--library", lib, "ingest", str(sample_pdf), "--ocr", "never", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "1 added, 0 unchanged, 0 failed" in result.output
    again = runner.invoke(app, ["--library", lib, "ingest", str(sample_pdf)])
    assert "0 added, 1 unchanged, 0 failed" in again.output
    docs = runner.invoke(app, ["--library", lib, "docs"])
    assert docs.exit_code == 0 and "folio-guide.pdf" in docs.output
    doc_id = docs.output.split("folio-guide.pdf")[0].split("│")[-2].strip()
    deleted = runner.invoke(app, ["--library", lib, "delete", doc_id])
    assert deleted.exit_code == 0 and "deleted" in deleted.output
    assert "The library is empty" in runner.invoke(app, ["--library", lib, "docs"]).output


def test_failures_exit_non_zero_with_one_line(tmp_path: Path, sample_pdf: Path) -> None:
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"")
    result = runner.invoke(app, ["--library", str(tmp_path / "lib"), "ingest", str(bad), str(sample_pdf), "--ocr", "never"])
    assert result.exit_code == 1
    assert "bad.pdf: empty file (0 bytes)" in result.output
    assert "1 added, 0 unchanged, 1 failed" in result.output
    assert "Traceback" not in result.output


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["--library", str(tmp_path / "lib"), "ingest", str(tmp_path / "nope.pdf")])
    assert missing.exit_code == 1 and "nope.pdf: no such file or folder" in missing.output
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    none = runner.invoke(app, ["--library", str(tmp_path / "lib"), "ingest", str(empty_dir)])
    assert none.exit_code == 1 and "no PDF files found" in none.output
    unknown = runner.invoke(app, ["--library", str(tmp_path / "lib"), "delete", "abc"])
    assert unknown.exit_code == 1 and "no document with id 'abc'" in unknown.output
    preset = runner.invoke(app, ["--config", "nope", "--library", str(tmp_path / "lib"), "docs"])
    assert preset.exit_code == 1 and "no config file or preset 'nope'" in preset.output
    runtime = runner.invoke(app, ["--library", str(tmp_path / "lib"), "ask", "why?", "--runtime", "onnx"])
    assert runtime.exit_code == 1
    assert "unknown generator runtime 'onnx'; use one of: auto, openvino, torch" in runtime.output


def test_check_reports_one_line_per_finding_and_exits_1_on_errors(
    tmp_path: Path, sample_pdf: Path, monkeypatch
) -> None:
    import sqlite3

    monkeypatch.setenv("FOLIO_RETRIEVAL__MODE", "bm25")
    monkeypatch.setenv("FOLIO_RETRIEVAL__FUSION__DENSE_WEIGHT", "0")
    lib = tmp_path / "lib"
    runner.invoke(app, ["--library", str(lib), "ingest", str(sample_pdf), "--ocr", "never", "--workers", "1"])
    clean = runner.invoke(app, ["--library", str(lib), "check"])
    assert clean.exit_code == 0 and clean.output.startswith("ok: 1 documents (0 failed)"), clean.output
    (lib / "assets" / ("0" * 64 + ".partial")).mkdir()
    leftover = runner.invoke(app, ["--library", str(lib), "check"])
    assert leftover.exit_code == 0 and "leftover: assets: assets/0000" in leftover.output
    with sqlite3.connect(lib / "folio.db") as db:
        db.execute("DELETE FROM pages WHERE number = 1")
    broken = runner.invoke(app, ["--library", str(lib), "check"])
    assert broken.exit_code == 1, broken.output
    assert "error: documents: " in broken.output and "1 of its 2 pages stored" in broken.output
    repaired = runner.invoke(app, ["--library", str(lib), "check", "--repair"])
    assert repaired.exit_code == 0 and repaired.output.count("(repaired)") == 2, repaired.output
    assert "Traceback" not in broken.output + repaired.output
    again = runner.invoke(app, ["--library", str(lib), "check"])
    assert again.exit_code == 0 and again.output.startswith("ok: 1 documents (1 failed)"), again.output


# ----------------------------------------------- global options, before or after the subcommand


def test_global_options_work_after_the_subcommand_too(tmp_path: Path, sample_pdf: Path) -> None:
    lib = str(tmp_path / "lib")
    added = runner.invoke(app, ["ingest", str(sample_pdf), "--ocr", "never", "--workers", "1", "--library", lib, "--user", "alice"])
    assert added.exit_code == 0 and "1 added" in added.output, added.output
    mine = runner.invoke(app, ["docs", "--library", lib])  # the local user's: alice's is not shown
    assert mine.exit_code == 0 and "The library is empty" in mine.output, mine.output
    for args in (["docs", "--library", lib, "-u", "alice"], ["-l", lib, "--user", "alice", "docs"]):
        listed = runner.invoke(app, args)
        assert listed.exit_code == 0 and "folio-guide.pdf" in listed.output, (args, listed.output)
    # Given on both sides, the one after the subcommand wins.
    both = runner.invoke(app, ["-l", str(tmp_path / "other"), "-u", "bob", "docs", "-l", lib, "-u", "alice"])
    assert both.exit_code == 0 and "folio-guide.pdf" in both.output, both.output
    assert not (tmp_path / "other").exists()
    preset = runner.invoke(app, ["docs", "--library", lib, "--config", "nope"])
    assert preset.exit_code == 1 and "no config file or preset 'nope'" in preset.output


def test_global_options_work_after_nested_subcommands(tmp_path: Path, sample_pdf: Path, monkeypatch) -> None:
    monkeypatch.setenv("FOLIO_RETRIEVAL__MODE", "bm25")
    monkeypatch.setenv("FOLIO_RETRIEVAL__FUSION__DENSE_WEIGHT", "0")
    lib = tmp_path / "lib"
    users = runner.invoke(app, ["user", "list", "--library", str(lib)])
    assert users.exit_code == 0 and "no users" in users.output, users.output
    assert (lib / "folio.db").is_file()  # the library it named, not the default one
    docs = tmp_path / "documents"
    docs.mkdir()
    shutil.copy(sample_pdf, docs / "guide.pdf")
    questions = tmp_path / "questions.json"
    question = {"doc_id": "guide.pdf", "question": "What is Folio?", "answer": "a tool", "answer_format": "Str"}
    questions.write_text(json.dumps([question | {"evidence_pages": "[1]"}]))
    level = logging.getLogger().level
    try:
        pages = runner.invoke(app, ["eval", "pages", str(questions), "--mode", "bm25", "--library", str(lib), "-v"])
        assert logging.getLogger().level == logging.INFO  # -v after the subcommand
    finally:
        logging.getLogger().setLevel(level)
    assert pages.exit_code == 0, pages.output
    assert "guide.pdf" in runner.invoke(app, ["-l", str(lib), "docs"]).output  # ingested there
    qa = runner.invoke(app, ["eval", "qa", str(questions), "--docs", str(tmp_path / "nope"), "-l", str(lib)])
    assert qa.exit_code == 1 and "no such folder of documents" in qa.output, qa.output


def test_an_unknown_option_still_fails_with_one_error_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["docs", "--library", str(tmp_path / "lib"), "--bogus"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if "No such option: --bogus" in line]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
