"""`Folio.ask`, `ask_stream`, `ask_batch` and `folio ask / batch / eval qa` on a tiny random model.

The library holds the sample guide (BM25 index). The sampler's text encoder is the bag-of-words
fake of tests/conftest.py (MiniLM has its own tests); the test marked slow runs the real
encoders and Qwen2.5-Coder-0.5B through the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import Answer, Citation, Folio
from app.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [
    "What is the default chunk size?",
    "How is a document identified?",
    "What does Figure 1 show?",
    "How many pages per second does the parser process?",
]


def _settings(tiny_lm_dir: Path) -> dict:
    return {
        "retrieval": {"mode": "bm25", "fusion": {"dense_weight": 0, "splade_weight": 0}},
        "parse": {"ocr": "never"},
        "ingest": {"workers": 1},
        "generator": {"model": str(tiny_lm_dir), "device": "cpu"},
        "answer": {"max_new_tokens": 3, "token_budget": 400, "sampler": {"image_features": False}},
    }


@pytest.fixture(scope="module", autouse=True)
def _fake_text_encoder(bow_encoder_class):
    """Answerers build their own MiniLM when the index has no dense part: use the fake."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("models.encoders.MiniLMEncoder", lambda _config=None: bow_encoder_class())
        yield


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_pdf: Path, tiny_lm_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("api-answer") / "lib"
    with Folio(library=root, **_settings(tiny_lm_dir)) as folio:
        (result,) = folio.ingest([sample_pdf])
        assert result.status == "added"
    return root


@pytest.fixture(scope="module")
def folio(library: Path, tiny_lm_dir: Path):
    with Folio(library=library, **_settings(tiny_lm_dir)) as f:
        yield f


@pytest.fixture
def config_file(tmp_path: Path, tiny_lm_dir: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(_settings(tiny_lm_dir)))
    return path


def _same(a: Answer, b: Answer) -> bool:
    """Equal answers apart from timings."""
    return (a.question, a.text, a.citations, a.evidence, a.error) == (
        b.question,
        b.text,
        b.citations,
        b.evidence,
        b.error,
    )


def test_app_exports_answer_and_citation() -> None:
    import app as package

    assert {"Answer", "Citation", "Folio", "Settings"} <= set(package.__all__)
    assert Answer.__module__ == Citation.__module__ == "pipeline.answering.types"


def test_ask_returns_an_answer_with_citations_to_real_blocks(folio: Folio) -> None:
    answer = folio.ask(QUESTIONS[0])
    assert answer.error is None and answer.evidence and answer.stats.new_tokens <= 3
    assert {e.file_name for e in answer.evidence} == {"folio-guide.pdf"}
    for citation in answer.citations:
        ref = answer.evidence[citation.evidence - 1]
        assert citation.block_id in ref.block_ids and citation.page == ref.page
    smaller = folio.ask(QUESTIONS[0], budget=100, sampler=False)
    assert sum(e.tokens for e in smaller.evidence) <= 100
    assert smaller.stats.stage("budget") is not None


def test_refrag_compresses_the_evidence_and_keeps_its_citations(folio: Folio, tmp_path: Path) -> None:
    from models.refrag import ChunkEncoder, ChunkProjector, embedding_norm

    generator = folio.answerer.generator()
    encoder = ChunkEncoder()
    hidden = generator.model.config.get_text_config(decoder=True).hidden_size
    ChunkProjector(encoder.feature_dim, hidden, width=32, norm=embedding_norm(generator)).save(
        tmp_path / "projector.pt"
    )
    refrag = {"projector": str(tmp_path / "projector.pt"), "chunk_tokens": 8, "expand_fraction": 0.25}
    plain = folio.ask(QUESTIONS[0], sampler=False)
    with pytest.raises(FileNotFoundError, match="pipeline.research.refrag_train"):  # none shipped
        folio.ask(QUESTIONS[0], use_refrag=True)
    answer = folio.ask(QUESTIONS[0], sampler=False, use_refrag=True, refrag=refrag)
    stage = answer.stats.stage("refrag")
    assert answer.error is None and stage is not None
    assert [e.block_ids for e in answer.evidence] == [e.block_ids for e in plain.evidence]
    assert stage.total_tokens == plain.stats.prompt_tokens  # positions without compression
    assert answer.stats.prompt_tokens == stage.kept_tokens < stage.total_tokens
    assert answer.stats.refrag_ratio == pytest.approx(stage.total_tokens / stage.kept_tokens, rel=1e-3)
    assert len(answer.stats.refrag_compressed) == len(answer.evidence)
    assert stage.kept_items == -(-stage.total_items // 4)  # ceil(p * chunks) kept as tokens
    for citation in answer.citations:
        ref = answer.evidence[citation.evidence - 1]
        assert citation.block_id in ref.block_ids and citation.page == ref.page
    assert Answer.from_dict(answer.to_dict()) == answer
    with pytest.raises(ValueError, match="alternatives"):
        folio.ask(QUESTIONS[0], use_refrag=True, use_urag=True, refrag=refrag)


def test_ask_stream_yields_text_then_the_answer(folio: Folio) -> None:
    parts = list(folio.ask_stream(QUESTIONS[1]))
    assert isinstance(parts[-1], Answer)
    assert all(isinstance(p, str) for p in parts[:-1])
    if not parts[-1].not_answerable:
        assert "".join(parts[:-1]) == parts[-1].text


def test_unknown_options_fail_before_any_question(folio: Folio) -> None:
    with pytest.raises(TypeError, match="unknown answer option"):
        folio.ask(QUESTIONS[0], temprature=0.2)
    with pytest.raises(TypeError, match="unknown answer option"):
        folio.ask_batch(QUESTIONS, topk=2)


def test_ask_batch_equals_a_loop_of_ask_in_order(folio: Folio, tmp_path: Path) -> None:
    items = [
        QUESTIONS[0],
        {"question": QUESTIONS[3], "doc_id": "folio-guide.pdf", "id": "q4"},
        QUESTIONS[2],
    ]
    seen = []
    batch = folio.ask_batch(items, out=tmp_path / "out.jsonl", on_progress=seen.append)
    loop = [
        folio.ask(QUESTIONS[0]),
        folio.ask(QUESTIONS[3], doc_ids=["folio-guide.pdf"]),
        folio.ask(QUESTIONS[2]),
    ]
    assert all(_same(a, b) for a, b in zip(batch, loop, strict=True))
    assert [a.question for a in batch] == [QUESTIONS[0], QUESTIONS[3], QUESTIONS[2]]
    assert batch[1].id == "q4" and batch[1].doc_ids
    assert [(p.done, p.total, p.resumed) for p in seen] == [
        (1, 3, False),
        (2, 3, False),
        (3, 3, False),
    ]
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2]
    assert [Answer.from_dict({k: v for k, v in x.items() if k != "index"}) for x in lines] == batch


def test_a_killed_batch_resumes_from_its_partial_output(folio: Folio, tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"

    def kill_after_two(progress) -> None:
        if progress.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        folio.ask_batch(QUESTIONS, out=out, on_progress=kill_after_two)
    assert len(out.read_text().splitlines()) == 2
    with out.open("a") as handle:
        handle.write('{"index": 2, "question": "What does Fig')  # the line being written
    seen = []
    resumed = folio.ask_batch(QUESTIONS, out=out, on_progress=seen.append)
    assert [p.resumed for p in seen] == [True, True, False, False]
    fresh = folio.ask_batch(QUESTIONS)
    assert all(_same(a, b) for a, b in zip(resumed, fresh, strict=True))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2, 3]
    assert [x["question"] for x in lines] == QUESTIONS


def test_a_bad_question_is_recorded_and_the_batch_goes_on(folio: Folio, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps(QUESTIONS[0]),
                json.dumps({"question": "   "}),
                "{not json",
                json.dumps({"question": QUESTIONS[3], "doc_id": "no-such-doc"}),
                json.dumps({"id": 5}),
                json.dumps({"question": QUESTIONS[3]}),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    answers = folio.ask_batch(source, out=out)
    assert len(answers) == 6
    errors = [a.error for a in answers]
    assert errors[0] is None and errors[5] is None
    assert "question must be non-empty" in errors[1]
    assert "line 3: not JSON" in errors[2]
    assert "no document" in errors[3]
    assert "no 'question'" in errors[4]
    # A rerun keeps the good answers and tries the failed ones again.
    seen = []
    folio.ask_batch(source, out=out, on_progress=seen.append)
    assert [p.resumed for p in seen] == [True, False, False, False, False, True]


# ---------------------------------------------------------------------------------- CLI


def test_cli_ask_streams_then_cites(library: Path, config_file: Path) -> None:
    result = runner.invoke(
        app,
        [
            "--library",
            str(library),
            "--config",
            str(config_file),
            "ask",
            QUESTIONS[0],
            "--doc",
            "folio-guide.pdf",
        ],
    )
    assert result.exit_code == 0, result.output
    as_json = runner.invoke(
        app,
        [
            "--library",
            str(library),
            "--config",
            str(config_file),
            "ask",
            QUESTIONS[0],
            "--json",
            "--no-sampler",
        ],
    )
    assert as_json.exit_code == 0, as_json.output
    answer = Answer.from_dict(json.loads(as_json.stdout))
    assert answer.question == QUESTIONS[0] and answer.evidence and not answer.stats.sampler
    if answer.citations:
        assert "citations" in result.output and "folio-guide.pdf" in result.output


def test_cli_user_errors_are_one_line(library: Path, config_file: Path) -> None:
    base = ["--library", str(library), "--config", str(config_file)]
    unknown = runner.invoke(app, [*base, "ask", "What?", "--doc", "nope"])
    assert unknown.exit_code == 1 and "no document with id or file name 'nope'" in unknown.output
    both = runner.invoke(app, [*base, "ask", "What?", "--no-retrieval", "--no-context"])
    assert both.exit_code == 1 and "exclude each other" in both.output
    assert "Traceback" not in unknown.output + both.output


def test_cli_batch(library: Path, config_file: Path, tmp_path: Path) -> None:
    source = tmp_path / "q.jsonl"
    source.write_text("\n".join(json.dumps(q) for q in QUESTIONS[:2]) + "\n")
    out = tmp_path / "a.jsonl"
    base = ["--library", str(library), "--config", str(config_file)]
    result = runner.invoke(app, [*base, "batch", str(source), "-o", str(out), "--no-retrieval"])
    assert result.exit_code == 0, result.output
    assert "2 answered" in result.output and len(out.read_text().splitlines()) == 2
    first = json.loads(out.read_text().splitlines()[0])
    assert first["stats"]["context"] == "first-pages"


def test_cli_eval_qa_writes_the_report(
    library: Path, config_file: Path, tmp_path: Path, sample_pdf: Path
) -> None:
    samples = [
        {"doc_id": "folio-guide.pdf", "question": QUESTIONS[0], "answer": "160", "answer_format": "Int",
         "evidence_pages": "[2]", "evidence_sources": "['Table']"},
        {"doc_id": "folio-guide.pdf", "question": "Who wrote Hamlet?", "answer": "Not answerable",
         "answer_format": "None", "evidence_pages": "[]", "evidence_sources": "[]"},
        {"doc_id": "missing.pdf", "question": QUESTIONS[1], "answer": "its SHA-256 hash",
         "answer_format": "Str", "evidence_pages": "[1]", "evidence_sources": "[]"},
    ]  # fmt: skip
    file = tmp_path / "samples.json"
    file.write_text(json.dumps(samples))
    report_path = tmp_path / "report.json"
    result = runner.invoke(
        app,
        ["--library", str(library), "--config", str(config_file), "eval", "qa", str(file),
         "--docs", str(sample_pdf.parent), "--json", str(report_path), "--answers", str(tmp_path / "ans.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert list(report) == [
        "questions", "accuracy", "f1", "not_answerable", "citation_page_recall",
        "citation_page_precision", "ttft_ms_p50", "total_ms_p50", "tokens_per_s", "peak_rss_mb",
        "by_format", "by_source", "per_question",
    ]  # fmt: skip
    assert report["by_source"] == {"Table": {"questions": 1, "accuracy": report["per_question"][0]["score"]}}
    assert 0 <= report["citation_page_precision"] <= 1 and report["total_ms_p50"] > 0
    assert report["by_format"]["Int"]["questions"] == 1 and set(report["by_format"]) == {
        "Int", "None", "Str",
    }  # fmt: skip
    assert report["questions"] == 3 and set(report["not_answerable"]) == {"precision", "recall"}
    rows = report["per_question"]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[2]["error"] == "missing.pdf: not in the library" and rows[2]["score"] == 0
    assert rows[0]["prompt_pages"] and rows[0]["stages"]["sample"]["kept_tokens"] <= 400
    assert report["peak_rss_mb"] > 0 and 0 <= report["accuracy"] <= 1
    assert rows[0]["answer_type"] and "short" in rows[0] and "compute_note" in rows[0]
    plain = runner.invoke(
        app,
        ["--library", str(library), "--config", str(config_file), "eval", "qa", str(file),
         "--docs", str(sample_pdf.parent), "--json", str(report_path), "--no-typed", "--no-compute"],
    )  # fmt: skip
    assert plain.exit_code == 0, plain.output
    untyped = json.loads(report_path.read_text())["per_question"]
    assert untyped[0]["answer_type"] == "" and untyped[0]["short"] == ""
    assert untyped[0]["sources"] == ["Table"] and untyped[0]["answerability"] is None
    # --as-stored parses nothing: the stored guide answers, a file the library lacks fails
    other = tmp_path / "docs"
    other.mkdir()
    (other / "folio-guide.pdf").write_bytes(sample_pdf.read_bytes())
    (other / "missing.pdf").write_bytes(b"%PDF-1.4 not stored")
    stored = runner.invoke(
        app,
        ["--library", str(library), "--config", str(config_file), "eval", "qa", str(file),
         "--docs", str(other), "--json", str(report_path), "--as-stored", "--no-typed", "--no-compute"],
    )  # fmt: skip
    assert stored.exit_code == 0, stored.output
    assert "using 1 of 2 documents as stored" in stored.output
    as_stored = json.loads(report_path.read_text())["per_question"]
    assert [r["prediction"] for r in as_stored[:2]] == [r["prediction"] for r in untyped[:2]]
    assert as_stored[2]["error"] == "missing.pdf: not in the library"


@pytest.mark.slow
def test_real_qwen_answers_the_sample_guide_with_the_right_page(
    tmp_path: Path, sample_pdf: Path
) -> None:
    """`folio ask` with the packaged Qwen2.5-Coder-0.5B and the default hybrid retriever."""
    lib = str(tmp_path / "lib")
    models = ROOT / "folio-library" / "models"
    ingest = runner.invoke(
        app, ["--library", lib, "ingest", str(sample_pdf), "--ocr", "never", "--workers", "1"]
    )
    assert ingest.exit_code == 0, ingest.output
    env = {"FOLIO_MODEL_CACHE": str(models)}
    result = runner.invoke(
        app, ["--library", lib, "ask", "What is the default chunk size?", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    answer = Answer.from_dict(json.loads(result.stdout))
    assert "160" in answer.text
    assert answer.citations and answer.citations[0].page == 2
    assert answer.citations[0].file_name == "folio-guide.pdf" and "160" in answer.citations[0].quote
