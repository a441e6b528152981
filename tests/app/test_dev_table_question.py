"""End to end on a real MMLongBench dev document (issue 23): a question about a borderless
table reaches the prompt with the table's rows as Markdown rows, the answer's row among them.

2310.09158v1.pdf, page 8, Table 3 (Vicuna-13B and Llama2-13B after pre-training, by baseline, on
MAVEN-ERE and Causal-TimeBank): the gold answer "CoT w. logical constraints" is the baseline cell
of the Vicuna-13B-PT row. With tables as grids the prompt holds that row, its cells in their
columns; with parser 1's rows of spans (`tables=spans`) it does not. The tiny random model's
answer does not matter here; retrieval and the sampler are the default ones (MiniLM).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app import Folio

FILE = "2310.09158v1.pdf"
QUESTION = "Which baseline did the pre-trained Vicuna-13B perform best on MAVEN-ERE?"
ROW = "| Vicuna-13B-PT | CoT w. logical constraints | 18.0 (+3.1%) | 6.0 (-15.7%) |"


def _prompt_lines(mmlb_dir: Path, library: Path, settings: dict, tables: str) -> list[str]:
    settings["parse"] = {"ocr": "never", "figure_ocr": "off", "tables": tables}
    del settings["retrieval"]  # the default hybrid retrieval and the sampler's real encoder
    with Folio(library=library, **settings) as folio:
        (result,) = folio.ingest([mmlb_dir / "documents" / FILE])
        assert result.status == "added", result.error
        answer = folio.ask(QUESTION, doc_ids=[result.doc_id])
    assert answer.error is None
    return [
        " ".join(line.split())
        for e in answer.evidence
        if e.page == 8
        for line in e.text.splitlines()
    ]


@pytest.mark.slow  # two ingests with the real encoders: ~1-2 minutes on 2 cores
def test_a_table_question_reads_the_answer_s_row_as_a_markdown_row(
    mmlb_dir: Path, tiny_settings, tmp_path: Path
) -> None:
    grid = _prompt_lines(mmlb_dir, tmp_path / "grid", tiny_settings(token_budget=1200), "grid")
    assert any(line.startswith(ROW) for line in grid)
    spans = _prompt_lines(mmlb_dir, tmp_path / "spans", tiny_settings(token_budget=1200), "spans")
    assert not any(line.startswith(ROW) for line in spans)
