"""`folio eval retrieval` end to end on a tiny BEIR folder (BM25 only: no model weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli_eval import eval_app
from pipeline.evaluation.retrieval import evaluate_retrieval
from retrieval.config import FusionConfig, RetrievalConfig


def test_evaluate_retrieval_returns_the_issue_format(tmp_path: Path, write_beir) -> None:
    folder = write_beir(tmp_path / "tiny")
    bm25_only = RetrievalConfig(fusion=FusionConfig(dense_weight=0.0, splade_weight=0.0))
    result = evaluate_retrieval(
        folder, modes=["bm25", "hybrid"], retrieval_config=bm25_only, cache_dir=tmp_path / "cache"
    )
    assert result["collection"] == "tiny" and result["queries"] == 2
    assert set(result["modes"]) == {"bm25", "hybrid"}
    assert set(result["modes"]["bm25"]) == {
        "ndcg@10",
        "map",
        "recall@100",
        "mrr",
        "p50_ms",
        "p95_ms",
    }
    assert result["modes"]["bm25"]["mrr"] == 1.0
    again = evaluate_retrieval(
        folder, modes=["bm25"], cache_dir=tmp_path / "cache"
    )  # from the cache
    assert again["modes"]["bm25"]["ndcg@10"] == result["modes"]["bm25"]["ndcg@10"]


def test_cli_prints_a_table_and_writes_json(tmp_path: Path, write_beir) -> None:
    folder = write_beir(tmp_path / "cols" / "tiny")
    out = tmp_path / "out.json"
    res = CliRunner().invoke(
        eval_app, ["retrieval", str(tmp_path / "cols"), "--modes", "bm25", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "tiny" in res.output and "ndcg@10" in res.output
    data = json.loads(out.read_text())
    assert data["collection"] == "tiny" and "bm25" in data["modes"]
    assert data["ndcg_gain"] == "linear" and "linear gains" in res.output
    assert folder.is_dir()
    res = CliRunner().invoke(
        eval_app,
        ["retrieval", str(folder), "--modes", "bm25", "--ndcg-gain", "exponential", "--json", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["ndcg_gain"] == "exponential"


def test_cli_user_errors_exit_1(tmp_path: Path, write_beir) -> None:
    runner = CliRunner()
    res = runner.invoke(eval_app, ["retrieval", str(tmp_path), "--modes", "bm25"])
    assert res.exit_code == 1 and "not a BEIR folder" in res.output
    write_beir(tmp_path / "tiny")
    res = runner.invoke(eval_app, ["retrieval", str(tmp_path / "tiny"), "--modes", "bm25,magic"])
    assert res.exit_code == 1 and "magic" in res.output
    with pytest.raises(ValueError, match="unknown nDCG gain 'cubic'"):
        evaluate_retrieval(tmp_path / "tiny", modes=["bm25"], ndcg_gain="cubic")
