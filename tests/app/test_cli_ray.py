"""`folio ingest --ray` and `folio batch --ray`: Ray stays out without --ray, bad addresses are
one line, and (slow) the commands on a local Ray give what they give without it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ["How is a document identified?", "What is the default chunk size?", "What does Figure 1 show?"]


@pytest.fixture
def config_file(tmp_path: Path, tiny_settings) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_settings()))
    return path


@pytest.fixture
def questions_file(tmp_path: Path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def test_without_ray_the_commands_never_import_it(
    tmp_path: Path, config_file: Path, questions_file: Path, sample_pdf: Path
) -> None:
    base = ["--library", str(tmp_path / "lib"), "--config", str(config_file)]
    script = f"""
import sys
from typer.testing import CliRunner
from app.cli import app
for args in ({base + ["ingest", str(sample_pdf)]!r}, {base + ["batch", str(questions_file), "-o", str(tmp_path / "out.jsonl")]!r}):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
assert "ray" not in sys.modules, "ray was imported"
print("no ray")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no ray" in done.stdout


@pytest.mark.parametrize("command", ["ingest", "batch"])
def test_a_bad_ray_address_is_one_line(command: str, tmp_path: Path, questions_file: Path) -> None:
    target = [str(tmp_path / "paper.pdf")] if command == "ingest" else [str(questions_file), "-o", str(tmp_path / "o.jsonl")]
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.7\n")
    result = runner.invoke(app, ["--library", str(tmp_path / "lib"), command, *target, "--ray-address", "paper.pdf"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --ray-address 'paper.pdf' is not a Ray address (local, auto, ray://HOST:PORT or HOST:PORT)"
    ]


def test_an_unreachable_ray_is_one_line(tmp_path: Path, config_file: Path, sample_pdf: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"  # nothing listens there once closed
    base = ["--library", str(tmp_path / "lib"), "--config", str(config_file)]
    result = runner.invoke(app, [*base, "ingest", str(sample_pdf), "--ray-address", address])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot connect to Ray at {address} ([Errno 111] Connection refused): start it with "
        "`ray start --head`, or give --ray no address for a local Ray"
    ]


@pytest.mark.slow
def test_ingest_and_batch_on_ray_match_the_commands_without_it(
    tmp_path: Path, config_file: Path, questions_file: Path, sample_pdf: Path, papers_dir: Path
) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        outputs = {}
        for mode, flags in (("local", []), ("ray", ["--ray"])):
            base = ["--library", str(tmp_path / mode), "--config", str(config_file)]
            files = [str(sample_pdf), str(papers_dir / "paperqa__pasa.pdf")]
            ingested = runner.invoke(app, [*base, "ingest", *files, *flags])
            assert ingested.exit_code == 0, ingested.output
            assert "2 added, 0 unchanged, 0 failed" in ingested.output
            out = tmp_path / f"{mode}.jsonl"
            pool = ["--ray-workers", "2"] if flags else []
            answered = runner.invoke(app, [*base, "batch", str(questions_file), "-o", str(out), *flags, *pool])
            assert answered.exit_code == 0, answered.output
            outputs[mode] = [json.loads(line) for line in out.read_text().splitlines()]
        keep = ("index", "question", "text", "citations", "error", "not_answerable")
        assert [{k: a[k] for k in keep} for a in outputs["ray"]] == [{k: a[k] for k in keep} for a in outputs["local"]]
    finally:
        ray.shutdown()
