"""The research scripts' shared ground: the answerer they drive reads the FOLIO_* environment as
`folio ask` does, and the dev split is stable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline.research.common import command_line, open_answerer, split_of


def test_the_research_answerer_reads_the_folio_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOLIO_GENERATOR__MODEL", "qwen2.5-coder-1.5b")
    monkeypatch.setenv("FOLIO_ANSWER__K", "7")
    monkeypatch.setenv("FOLIO_MODEL_CACHE", str(tmp_path / "models"))
    monkeypatch.setenv("FOLIO_SERVE__PORT", "8000")  # the app's own settings are not in the way
    answerer = open_answerer(tmp_path / "lib")
    try:
        assert answerer.generator_config.model == "qwen2.5-coder-1.5b"
        assert answerer.config.k == 7 and answerer.model_cache == tmp_path / "models"
        assert answerer.library.root == tmp_path / "lib"
    finally:
        answerer.library.close()


def test_the_dev_split_and_the_recorded_command_line() -> None:
    names = [f"doc-{i}.pdf" for i in range(200)]
    val = [n for n in names if split_of(n) == "val"]
    assert 0.2 < len(val) / len(names) < 0.4 and split_of(val[0]) == "val"  # stable, ~30%
    args = argparse.Namespace(out="x.pt", k=[8, 16], seed=0)
    assert command_line("pipeline.research.refrag", args, skip={"out"}) == (
        "python -m pipeline.research.refrag --k 8 16 --seed 0"
    )
