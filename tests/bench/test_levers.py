"""bench.levers: reports side by side, and a lever measured on the questions it changes."""

import json

import pytest

from bench.levers import load_spec, patched, summary


def _row(question: str, score: float, prediction: str = "x") -> dict:
    return {
        "doc_id": "a.pdf", "question": question, "prediction": prediction, "short": prediction,
        "gold": "1", "answer_format": "Int", "score": score, "error": "", "cited_pages": [1],
        "evidence_pages": [1], "prompt_page_recall": 1.0, "ttft_ms": 1000, "total_ms": 2000,
        "new_tokens": 3,
    }  # fmt: skip


def test_a_patch_replaces_only_the_questions_it_answered(tmp_path):
    base = [_row("q1", 0.0), _row("q2", 0.0), _row("q3", 1.0)]
    patch = [_row("q2", 1.0, "1")]
    rows = patched(base, patch)
    assert [r["score"] for r in rows] == [0.0, 1.0, 1.0]
    assert rows[1]["prediction"] == "1" and rows[0] is base[0]

    (tmp_path / "base.json").write_text(json.dumps({"per_question": base}))
    (tmp_path / "patch.json").write_text(json.dumps({"per_question": patch}))
    from_files = load_spec(f"{tmp_path / 'base.json'}+{tmp_path / 'patch.json'}")
    assert summary(from_files)["accuracy"] == pytest.approx(2 / 3)


def test_a_patch_of_other_questions_is_refused():
    with pytest.raises(ValueError, match="not in the base report"):
        patched([_row("q1", 0.0)], [_row("elsewhere", 1.0)])
