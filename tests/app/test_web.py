"""The web app's handlers and pure functions, without a browser (the browser tests are
test_web_e2e.py and test_web_edges.py): history conversion, chips, streaming replies and their
errors, live status while a question runs, upload checks and progress, tables, deletions,
`build_ui` without launching, and `folio serve`'s refusals."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import Folio
from app.cli import app
from app.settings import is_loopback, parse_auth
from app.web import (
    AskOptions,
    Reply,
    UploadRow,
    apply_progress,
    build_ui,
    check_upload,
    chip_ref,
    citation_chips,
    document_choices,
    documents_html,
    evidence_rows,
    format_answer,
    history_to_turns,
    mark_stopped,
    progress_html,
    respond,
    stage_rows,
    summary_markdown,
    transparency_html,
)
from pipeline.answering.answer import (
    Answer,
    AnswerStats,
    Citation,
    EvidenceRef,
    RetrievedChunk,
    StageStats,
)
from pipeline.ingestion.ingest import IngestResult, Progress
from pipeline.library.documents import DocumentInfo

runner = CliRunner()


def _citation(page: int, doc: str = "d1", name: str = "paper.pdf", n: int = 1) -> Citation:
    return Citation(doc, name, page, (10.0, 20.0, 200.0, 60.0), f"quote on page {page}", 100 + page, n)


def _answer(*citations: Citation, text: str = "42 [1]", **kw) -> Answer:
    stats = AnswerStats(
        stages=(
            StageStats("retrieve", 20, 92, 2500, 12000, 12.5),
            StageStats("sample", 3, 58, 399, 17000, 270.0),
        ),
        prompt_tokens=589,
        new_tokens=4,
        ttft_ms=2740.0,
        tokens_per_s=6.5,
        total_ms=3100.0,
        model="/models/qwen",
        context="retrieved",
        sampler=True,
    )
    evidence = (EvidenceRef(1, "d1", "paper.pdf", 5, (105,), "text", 0.71, 120, "The answer is 42."),)
    return Answer(question="q?", text=text, citations=citations, stats=stats, evidence=evidence, **kw)


# ------------------------------------------------------------------------------ history


def test_history_to_turns_reads_string_and_typed_block_content() -> None:
    history = [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": [{"type": "text", "text": "Second?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Two"}, {"type": "text", "text": "."}]},
        {"role": "assistant", "content": {"type": "file", "path": "figure.png"}},
        {"role": "user", "content": "Third?"},
    ]
    turns = history_to_turns(history)
    assert [(t.question, t.answer) for t in turns] == [
        ("First?", "One."),
        ("Second?", "Two.\n"),
        ("Third?", ""),
    ]
    assert history_to_turns(None) == [] and history_to_turns([{"role": "assistant", "content": "hi"}]) == []


# -------------------------------------------------------------------------------- chips


def test_chips_group_citations_by_page_in_first_cited_order() -> None:
    answer = _answer(_citation(5), _citation(2, n=2), _citation(5, n=3))
    chips = citation_chips(answer)
    assert [(c.label, c.page, len(c.boxes)) for c in chips] == [("p. 5", 5, 2), ("p. 2", 2, 1)]
    several = citation_chips(_answer(_citation(5), _citation(3, doc="d2", name="annual-report-2023.pdf")))
    assert [c.label for c in several] == ["paper p. 5", "annual-report-2023 p. 3"]


def test_format_answer_ends_with_chip_links_and_escapes_model_text() -> None:
    text = format_answer(_answer(_citation(5), _citation(7), text="<b>42</b> *bold* [1]"), turn=3)
    first_line, chips = text.split("\n\n")
    assert "<b>" not in first_line and "&lt;b&gt;42&lt;/b&gt;" in first_line and r"\*bold\*" in first_line
    assert "[1]" not in first_line
    assert chips.startswith('[[p. 5]](#folio-cite-3-0 "paper.pdf, page 5: quote on page 5")')
    assert "(#folio-cite-3-1 " in chips
    assert chip_ref("3-1|1712345") == (3, 1) and chip_ref("3-1") == (3, 1) and chip_ref("junk") is None


def test_format_answer_for_failures_and_declines() -> None:
    failed = Answer.failed("q?", "no document with id 'x'\nmore lines")
    assert format_answer(failed, 0) == "⚠️ **Could not answer.** no document with id 'x'"
    declined = Answer(question="q?", text="Not answerable", not_answerable=True)
    assert format_answer(declined, 0).startswith("**Not answerable.**")
    assert format_answer(_answer(text="42"), 0) == "42"  # nothing cited: no chips


# ---------------------------------------------------------------------------- respond


class _FakeFolio:
    """Streams two deltas then an answer; or raises what it is given."""

    def __init__(self, answer: Answer | None = None, error: Exception | None = None) -> None:
        self.answer, self.error, self.calls = answer, error, []

    def ask_stream(self, question, *, doc_ids=None, **overrides):
        self.calls.append((question, doc_ids, overrides))
        if self.error is not None:
            raise self.error
        yield "4"
        yield "2 [1]"
        yield self.answer


def test_respond_streams_partial_text_then_the_answer_with_chips() -> None:
    answer = _answer(_citation(5))
    folio = _FakeFolio(answer)
    history = [{"role": "user", "content": "Earlier?"}, {"role": "assistant", "content": "Yes."}]
    options = AskOptions(context="retrieved", sampler=False, mode="bm25", k=5, budget=300)
    replies = list(respond("  What is it? ", history, folio, doc_ids=["d1"], options=options))
    assert [r.text for r in replies[:-1]] == ["4", "42"]
    assert all(r.answer is None for r in replies[:-1])
    assert replies[-1].answer is answer and "(#folio-cite-1-0 " in replies[-1].text
    assert folio.calls == [
        (
            "What is it?",
            ["d1"],
            {
                    "context": "retrieved", "sampler": False, "k": 5, "budget": 300,
                    "use_urag": False, "use_refrag": False, "answerability": False,
                    "typed": True, "compute": False,
                    "mode": "bm25",
                },
        )
    ]
    assert "mode" not in AskOptions().overrides()


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (LookupError("no document with id or file name 'x' (see `folio docs`)"), "no document with id"),
        (ValueError("first-pages context (no retrieval) needs the document"), "needs the document"),
        (RuntimeError("CUDA out of memory\nTraceback (most recent call last):"), "internal error (RuntimeError"),
    ],
)
def test_respond_turns_errors_into_one_clear_message(error: Exception, shown: str) -> None:
    (reply,) = list(respond("Why?", [], _FakeFolio(error=error)))
    assert reply.text.startswith("⚠️ **Could not answer.**") and shown in reply.text
    assert "Traceback" not in reply.text and "\n" not in reply.text
    assert reply.answer is not None and reply.answer.error


def test_respond_asks_for_a_question_when_the_message_is_blank() -> None:
    folio = _FakeFolio(_answer())
    assert list(respond("   ", [], folio)) == [
        Reply("⚠️ **Could not answer.** Type a question first.", Answer.failed("", "Type a question first."))
    ]
    assert folio.calls == []


def test_stop_marks_only_an_answer_still_streaming() -> None:
    streaming = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Partial ans"}]
    assert mark_stopped(streaming, answered=0)[-1]["content"] == "Partial ans _(stopped)_"
    assert mark_stopped(streaming, answered=1) == streaming
    waiting = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "_Searching the library and reading the evidence…_"}]
    assert mark_stopped(waiting, answered=0)[-1]["content"] == "_Stopped before the answer began._"
    assert mark_stopped([], answered=0) == []


# ----------------------------------------------------------------------------- library


def test_upload_checks_size_type_and_pages(tmp_path: Path, sample_pdf: Path) -> None:
    assert check_upload(sample_pdf, max_mb=100, max_pages=100) is None
    assert "pages, over the upload limit of 1" in check_upload(sample_pdf, max_mb=100, max_pages=1)
    assert "over the upload limit of 0.001 MB" in check_upload(sample_pdf, max_mb=0.001, max_pages=100)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "not a PDF" in check_upload(text, max_mb=100, max_pages=100)


def test_progress_rows_follow_parse_index_and_finish_events() -> None:
    a, b = Path("/up/a.pdf"), Path("/up/b.pdf")
    rows = {a: UploadRow("a.pdf"), b: UploadRow("b.pdf")}
    apply_progress(rows, Progress("page", a, 3, 10, ocr_pages=2))
    assert rows[a].label == "Parsing page 3 of 10, OCR on 2" and rows[a].fraction == pytest.approx(0.27)
    apply_progress(rows, Progress("page", a, 10, 10))
    assert rows[a].label == "Storing and indexing"
    apply_progress(rows, Progress("document", a, result=IngestResult(a, "d", "added", 10, 42)))
    apply_progress(
        rows, Progress("document", b, result=IngestResult(b, None, "failed", error="b.pdf: encrypted (give --password)"))
    )
    assert rows[a].label == "Ready: 10 pages, 42 passages" and rows[a].fraction == 1.0
    assert rows[b].label == "Failed: encrypted (give --password)"
    page = progress_html(list(rows.values()))
    assert page.count("<progress") == 2 and 'class="folio-upload folio-bad"' in page
    assert progress_html([]) == ""


def test_documents_table_escapes_names_and_spells_out_errors() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    docs = [
        DocumentInfo("a" * 64, "<script>.pdf", "A title", 12, 40, "ok", None, now),
        DocumentInfo("b" * 64, "broken.pdf", None, 0, 0, "failed", "broken.pdf: not a PDF", now),
    ]
    page = documents_html(docs)
    assert "<script>" not in page and "&lt;script&gt;.pdf" in page
    assert 'failed</span>' in page and '<div class="folio-failed-reason">not a PDF</div>' in page
    assert document_choices(docs, ready_only=True) == [("<script>.pdf (12 p.)", "a" * 64)]
    assert len(document_choices(docs, ready_only=False)) == 2
    assert "library is empty" in documents_html([])


# ------------------------------------------------------------------------ transparency


def test_transparency_shows_stage_costs_evidence_and_headlines() -> None:
    answer = _answer(_citation(5))
    assert stage_rows(answer.stats)[0] == ["Retrieve (chunks)", 20, 92, 2500, 12000, 12.5]
    summary = summary_markdown(answer.stats)
    assert "**Prompt** 589 tokens" in summary and "**First token** 2.74 s" in summary
    assert "6.5 tokens/s" in summary and "`qwen`" in summary and "WuKong sampler on" in summary
    tables = transparency_html(answer)
    assert "Sample (WuKong)" in tables and "The answer is 42." in tables
    assert "No chunks retrieved." in tables
    assert summary_markdown(None).startswith("No statistics")


def test_transparency_shows_what_urag_kept_and_what_the_screen_left_out() -> None:
    from dataclasses import replace

    answer = _answer(_citation(5))
    evidence = (
        *answer.evidence,
        EvidenceRef(2, "d1", "paper.pdf", 9, (109,), "text", 0.40, 80, "Unrelated."),
    )
    stats = replace(
        answer.stats,
        stages=(
            *answer.stats.stages,
            StageStats("screen", 11, 12, 190, 200, 0.4),
            StageStats("urag", 1, 2, 120, 200, 310.0),
        ),
        urag_kept=(1,),
        urag_pages=(5,),
    )
    answer = replace(answer, evidence=evidence, stats=stats)
    summary = summary_markdown(answer.stats)
    assert "**URaG** the deeper layers read 1 of 2 evidence items ([1]; pages 5)" in summary
    assert "**Screened** 1 sentence of the evidence addressed the model" in summary
    assert [row[6] for row in evidence_rows(answer)] == ["read", "dropped"]
    assert "<th>Deep layers</th>" in transparency_html(answer) and "URaG kept it" in transparency_html(answer)
    assert [row[6] for row in evidence_rows(_answer())] == ["all"]
    assert AskOptions(urag=True).overrides()["use_urag"] is True
    assert AskOptions(refrag=True).overrides()["use_refrag"] is True


# ------------------------------------------------------------------------- build and serve


def test_build_ui_constructs_without_launching(tmp_path: Path) -> None:
    import gradio as gr

    with Folio(library=tmp_path / "lib") as folio:
        demo = build_ui(folio)
        assert isinstance(demo, gr.Blocks)
        ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
        assert {"folio-upload", "folio-chat", "folio-page", "folio-cite-ref", "folio-stop"} <= ids
        assert not (tmp_path / "lib" / "index").exists()  # nothing heavy loads to build the page
        from app.web import Engine

        with pytest.raises(ValueError, match="other logins"):
            build_ui(folio, Engine(folio), accounts=True)


def test_loopback_and_auth_parsing() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert parse_auth("ann:s3cret:x") == ("ann", "s3cret:x") and parse_auth(None) is None
    with pytest.raises(ValueError, match="user:password"):
        parse_auth("justauser")


def test_serve_refuses_a_public_address_without_a_password(tmp_path: Path, monkeypatch) -> None:
    launched = []
    monkeypatch.setattr("app.web.serve", lambda *a, **kw: launched.append(kw))
    library = ["--library", str(tmp_path / "lib")]
    result = runner.invoke(app, [*library, "serve", "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "refusing to serve 0.0.0.0 without a password" in result.output
    result = runner.invoke(app, [*library, "serve", "--auth", "nocolon"])
    assert result.exit_code == 1 and "user:password" in result.output
    result = runner.invoke(app, [*library, "serve", "--host", "0.0.0.0", "--auth", "ann:pw", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert launched == [
        {"host": "0.0.0.0", "port": 8123, "auth": ("ann", "pw"), "accounts": False, "on_ready": launched[0]["on_ready"],
         "api": None, "api_only": False}
    ]
    monkeypatch.setenv("FOLIO_SERVE__ALLOW_NO_AUTH", "true")
    result = runner.invoke(app, [*library, "serve", "--host", "0.0.0.0"])
    assert result.exit_code == 0 and "without a password" in result.output


def test_serve_with_accounts_asks_everyone_to_sign_in(tmp_path: Path, monkeypatch) -> None:
    launched = []
    monkeypatch.setattr("app.web.serve", lambda *a, **kw: launched.append(kw))
    library = ["--library", str(tmp_path / "lib")]
    result = runner.invoke(app, [*library, "user", "add", "zoe", "--password-stdin"], input="long enough\n")
    assert result.exit_code == 0 and "added user zoe" in result.output
    result = runner.invoke(app, [*library, "serve", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "without a password" not in result.output
    assert launched[-1]["accounts"] is True and launched[-1]["auth"] is None
    result = runner.invoke(app, [*library, "user", "list"])
    assert "zoe" in result.output
    result = runner.invoke(app, [*library, "user", "add", "zoe", "--password-stdin"], input="long enough\n")
    assert result.exit_code == 1 and "exists" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*library, "user", "add", "../x", "--password-stdin"], input="long enough\n")
    assert result.exit_code == 1 and "not allowed" in result.output
    result = runner.invoke(app, [*library, "--user", "a b", "docs"])
    assert result.exit_code == 1 and "not allowed" in result.output
    result = runner.invoke(app, [*library, "user", "remove", "zoe"])
    assert result.exit_code == 0 and "removed user zoe" in result.output


def test_progress_shows_while_page_events_keep_coming(tmp_path: Path) -> None:
    """A parser sends page events without a quiet gap: the panel must still update."""
    import queue
    import threading
    import time

    from app.web import drain_progress
    from pipeline.ingestion.ingest import Progress

    path = tmp_path / "long.pdf"
    rows = {path: UploadRow(path.name)}
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def parser() -> None:
        page = 0
        while not stop.is_set():
            page += 1
            events.put(Progress("page", path, page, 10**9))
            time.sleep(0.001)

    thread = threading.Thread(target=parser, daemon=True)
    thread.start()
    try:
        assert drain_progress(rows, events, seconds=0.2)
        assert rows[path].state == "parsing" and rows[path].pages_done > 0
    finally:
        stop.set()
        thread.join()


# -------------------------------------------------------------- live status while asking


class _SlowFolio:
    """Announces two stages, waits between them, then streams an answer."""

    def __init__(self, answer: Answer, pause: float = 0.3) -> None:
        self.answer, self.pause, self.closed = answer, pause, False

    def ask_stream(self, question, *, doc_ids=None, on_progress=None, **overrides):
        try:
            on_progress("Retrieving from the library…")
            time.sleep(self.pause)
            on_progress("Sampling evidence (WuKong)…")
            time.sleep(self.pause)
            yield "42"
            yield " [1]"
            yield self.answer
        except GeneratorExit:
            self.closed = True
            raise


def test_a_question_shows_the_stage_running_and_its_seconds_until_the_answer_streams() -> None:
    from app.web import Engine

    answer = _answer(_citation(5))
    folio = _SlowFolio(answer)
    replies = list(Engine(folio).ask(folio, "What?", [], every_s=0.1))
    texts = [r.text for r in replies]
    assert texts[0] == "_Searching the library and reading the evidence… (0 s)_"
    assert "_Retrieving from the library… (0 s)_" in texts
    assert any(t.startswith("_Sampling evidence (WuKong)… (") for t in texts)
    waiting = [t for t in texts if t.startswith("_Retrieving")]
    assert len(waiting) >= 2, "the status line is not refreshed while a stage runs"
    assert texts[-2:] == ["42", replies[-1].text] and replies[-1].answer is answer
    assert all(r.answer is None for r in replies[:-1])


def test_stop_while_streaming_stops_the_question_and_marks_it() -> None:
    from app.web import Engine

    folio = _SlowFolio(_answer(_citation(5)), pause=0.05)
    stream = Engine(folio).ask(folio, "What?", [], every_s=0.02)
    assert next(stream).text.endswith("(0 s)_")
    while next(stream).text != "42":
        pass
    stream.close()  # what Stop does to the running handler
    for _ in range(100):
        if folio.closed:
            break
        time.sleep(0.02)
    assert folio.closed
    history = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "_Reading 1,062 prompt tokens… (7 s)_"}]
    assert mark_stopped(history, answered=0)[-1]["content"] == "_Stopped before the answer began._"


def test_respond_hands_the_progress_callback_to_the_library() -> None:
    folio = _FakeFolio(_answer())
    seen = []
    list(respond("Why?", [], folio, on_progress=seen.append))
    assert folio.calls[0][2]["on_progress"] == seen.append


# ------------------------------------------------------------ readable transparency tables


def test_transparency_explains_each_stage_and_shows_the_answers_own_retrieved_chunks() -> None:
    from dataclasses import replace

    answer = _answer(_citation(5))
    stats = replace(
        answer.stats,
        stages=(*answer.stats.stages, StageStats("prompt", 1, 1, 120, 589, 0.0), StageStats("generate", 1, 1, 4, 6, 350.0)),
    )
    chunks = (RetrievedChunk("d1", "paper.pdf", 5, 7.25, "The answer is 42. " * 30),)
    answer = replace(answer, stats=stats, retrieved=chunks)
    tables = transparency_html(answer)
    assert "max-height" not in tables and "folio-scroll" not in tables
    assert "Generate (tokens / most allowed)" in tables
    for explained in ("the WuKong sampler keeps", "the library index&#x27;s best k chunks", "tokens written of the most allowed"):
        assert explained in tables
    assert "Deep layers" not in tables  # URaG off: every item reached every layer
    retrieved = tables.split("Retrieved chunks")[1]
    assert 'title="paper.pdf">paper.pdf</div></td><td>5</td><td>7.25</td>' in retrieved and "The answer is 42." in retrieved
    first_pages = replace(answer, stats=replace(stats, context="first-pages"), retrieved=())
    assert "Retrieval was off for this question." in transparency_html(first_pages)


# --------------------------------------------------------------------- deleting documents


def test_long_file_names_are_cut_with_the_full_name_as_tooltip() -> None:
    from datetime import UTC, datetime

    name = "a-very-long-file-name-of-a-quarterly-report-2023-final-version.pdf"
    doc = DocumentInfo("a" * 64, name, "A title with words", 12, 40, "ok", None, datetime.now(UTC))
    assert f'<div class="folio-file-name" title="{name}">{name}</div>' in documents_html([doc])
    row = UploadRow(name)
    assert f'class="folio-upload-name folio-file-name" title="{name}"' in progress_html([row])


def test_deleting_forgets_the_upload_rows_and_the_page_of_the_deleted_document() -> None:
    from types import SimpleNamespace

    from app.web.handlers import after_delete
    from app.web.uploads import without_documents, without_failures

    rows = [UploadRow("a.pdf", "added", doc_id="A"), UploadRow("b.pdf", "failed", doc_id="B"), UploadRow("c.txt", "rejected")]
    assert [r.name for r in without_documents(rows, {"A"})] == ["b.pdf", "c.txt"]
    assert [r.name for r in without_failures(rows)] == ["a.pdf"]

    class _Gone:
        def owns(self, doc_id):
            return False

    view = {"doc_id": "A", "file_name": "folio-guide.pdf", "page": 2, "turn": 0, "chip": 0, "highlights": {}}
    progress, kept, image, caption, _figures, state = after_delete(
        _Gone(), [SimpleNamespace(doc_id="A")], rows, view, []
    )
    assert [r.name for r in kept] == ["b.pdf", "c.txt"] and "a.pdf" not in progress
    assert image is None and caption.startswith("⚠️ **folio-guide.pdf** (deleted), page 2")
    assert "40b3ef" not in caption and state == view


def test_a_chip_to_a_deleted_document_names_the_file() -> None:
    from app.web.handlers import render, show_chip

    class _Gone:
        library = None  # the answer read no figures: the library is not asked for any

        def owns(self, doc_id):
            return False

    answer = _answer(_citation(5, doc="40b3ef43cd3a" * 5, name="folio-guide.pdf"))
    image, caption, _figures, view, _tab = show_chip(_Gone(), answer, 0, 0)
    assert image is None and "**folio-guide.pdf** (deleted), page 5" in caption
    assert "no document" not in caption and view["file_name"] == "folio-guide.pdf"
    assert render(_Gone(), {**view, "page": 6}, None)[1].startswith("⚠️ **folio-guide.pdf** (deleted), page 6")


def test_a_cancelled_delete_says_nothing_and_keeps_the_choice(tmp_path: Path) -> None:
    from app.web import Engine
    from app.web.handlers import on_delete

    with Folio(library=tmp_path / "lib") as folio:
        engine = Engine(folio)
        cancelled = on_delete(engine, "d" * 64, False, [], [], None, [], None)
        assert cancelled[0] == "" and len(cancelled) == 11
        assert all(not isinstance(v, (str, list)) for v in cancelled[1:])  # every other output skipped
        none_chosen = on_delete(engine, None, False, [], [], None, [], None)
        assert none_chosen[0] == "Choose a document to delete."


def test_remove_failed_uploads_deletes_every_failed_document_and_nothing_else(
    tmp_path: Path, sample_pdf: Path
) -> None:
    from app.web import Engine
    from app.web.handlers import on_remove_failed

    broken = []
    for name in ("empty.pdf", "garbage.pdf"):
        path = tmp_path / name
        path.write_bytes(b"" if name == "empty.pdf" else b"%PDF-1.4 not really")
        broken.append(path)
    with Folio(library=tmp_path / "lib", parse={"ocr": "never"}, ingest={"workers": 1}) as folio:
        results = folio.ingest([sample_pdf, *broken])
        assert sorted(r.status for r in results) == ["added", "failed", "failed"]
        rows = [UploadRow(r.path.name, r.status, doc_id=r.doc_id) for r in results]
        engine = Engine(folio)
        assert on_remove_failed(engine, False, [], rows, None, [], None)[0] == ""
        assert len(folio.documents()) == 3  # cancelled: nothing removed
        out = on_remove_failed(engine, True, [], rows, None, [], None)
        assert out[0] == "Removed 2 failed uploads."
        assert [(d.file_name, d.status) for d in folio.documents()] == [(sample_pdf.name, "ok")]
        assert [r.name for r in out[6]] == [sample_pdf.name]  # the uploads state keeps the good one
        assert "empty.pdf" not in out[5] and sample_pdf.name in out[5]


def test_handlers_are_bound_to_the_engine_with_the_signature_gradio_reads() -> None:
    import inspect

    from app.web.handlers import on_ask, on_delete
    from app.web.layout import bind

    engine = object()
    ask = bind(on_ask, engine)
    assert inspect.isgeneratorfunction(ask)
    assert list(inspect.signature(ask).parameters)[0] == "text"
    delete = bind(on_delete, engine)
    assert not inspect.isgeneratorfunction(delete)
    assert list(inspect.signature(delete).parameters)[-1] == "request"


def test_stop_ends_the_question_in_its_own_stream_and_brings_ask_back() -> None:
    from types import SimpleNamespace

    from app.web import Engine
    from app.web.handlers import on_ask, on_clear, on_stop

    folio = _SlowFolio(_answer(_citation(5)), pause=0.3)
    engine = Engine(folio)
    request = SimpleNamespace(username=None, session_hash="tab-1")
    updates = on_ask(engine, "What?", [], [], [], "retrieved", True, "default", 20, 1000, False, False, False, True, True, request)
    first = next(updates)
    chat, ask = first[1], first[-1]
    assert chat[-1]["content"].endswith("(0 s)_") and ask.interactive is False
    assert on_stop(engine, chat, [], request).interactive is True
    *_, last = updates
    assert last[1][-1]["content"] == "_Stopped before the answer began._" and last[-1].interactive is True
    assert last[2] is not None and not isinstance(last[2], list)  # no answer kept for the turn
    # Stop with no question open changes nothing and does not stop the next question.
    done = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "42"}]
    on_stop(engine, done, [_answer()], request)
    assert not engine.should_stop("tab-1")
    assert on_clear()[-1].interactive is True


def test_a_setting_check_across_fields_reads_as_one_sentence() -> None:
    from pydantic import ValidationError

    from pipeline.config import AnswerConfig

    with pytest.raises(ValidationError) as caught:
        AnswerConfig(use_urag=True, use_refrag=True)
    (reply,) = list(respond("Why?", [], _FakeFolio(error=caught.value)))
    assert "invalid setting :" not in reply.text and "Value error" not in reply.text
    assert reply.text.startswith("⚠️ **Could not answer.** URaG and REFRAG")
