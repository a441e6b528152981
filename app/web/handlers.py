"""The page's event handlers: plain module-level functions of the engine, the inputs' values
and the request; each returns (or yields) its outputs' values in the order its docstring
lists, which is the order app/web/layout.py wires the output components in.

Per-session state lives in Gradio States the handlers receive and return: `answers` (the
`Answer` of each turn of the conversation, None for a turn without one), `view` (the page the
evidence viewer shows: doc_id, file_name, page, turn, chip, highlights) and `uploads` (the
`UploadRow`s of the last upload).
"""

from __future__ import annotations

import html
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from app.api import Folio
from app.web.chat import (
    AskOptions,
    BBox,
    Chip,
    chip_ref,
    citation_chips,
    error_message,
    history_to_turns,
    is_status,
    mark_stopped,
    markdown_text,
)
from app.web.engine import Engine
from app.web.panels import (
    deleted_caption,
    document_choices,
    documents_html,
    figure_gallery,
    page_caption,
    page_view,
    summary_markdown,
    transparency_html,
)
from app.web.uploads import (
    FINISHED,
    UploadRow,
    check_upload,
    drain_progress,
    progress_html,
    without_documents,
    without_failures,
)
from pipeline.answering.answer import Answer
from pipeline.ingestion.ingest import Progress

logger = logging.getLogger(__name__)

PAGE_HINT = (
    "Click a citation chip such as **[p. 5]** in an answer to see the cited page here, with the "
    "supporting regions highlighted."
)
CONFIRM_DELETE = "Delete this document and everything derived from it?"
CONFIRM_REMOVE_FAILED = "Remove every failed upload from the library?"
_STREAM_EVERY_S = 0.05  # the least time between two chat updates while the answer streams


def me(engine: Engine, request: gr.Request | None) -> Folio:
    """The library as the signed-in user of this request sees it."""
    return engine.for_user(getattr(request, "username", None))


# ------------------------------------------------------------------------------ the library


def library(folio: Folio, selected: list[str] | None) -> tuple[Any, Any, Any, Any]:
    """The library's outputs: documents table, "Ask about" picker (keeping the ready documents
    still selected), delete picker, and the "Remove failed uploads" button (shown when there
    are failed documents)."""
    documents = folio.documents()
    ready = {d.doc_id for d in documents if d.status == "ok"}
    failed = sum(d.status != "ok" for d in documents)
    return (
        documents_html(documents),
        gr.CheckboxGroup(
            choices=document_choices(documents, ready_only=True),
            value=[d for d in (selected or []) if d in ready],
        ),
        gr.Dropdown(choices=document_choices(documents, ready_only=False), value=None),
        gr.Button(value=f"Remove failed uploads ({failed})", visible=failed > 0),
    )


def on_upload(
    engine: Engine,
    files: list[str] | None,
    selected: list[str] | None,
    request: gr.Request,
) -> Iterator[tuple]:
    """Check, parse and index uploaded PDFs with a progress bar each.

    Yields: progress box, the 4 library outputs, the upload box, the uploads state.
    """
    folio = me(engine, request)
    limits = folio.settings.serve
    paths = [Path(f) for f in files or []]
    if not paths:
        yield (gr.skip(),) * 7
        return
    rows = {p: UploadRow(p.name) for p in paths}
    for row in list(rows.values())[limits.max_upload_files :]:
        row.state = "rejected"
        row.detail = f"more than {limits.max_upload_files} files in one upload"
    accepted = []
    for path, row in rows.items():
        if row.state == "rejected":
            continue
        reason = check_upload(path, max_mb=limits.max_upload_mb, max_pages=limits.max_upload_pages)
        if reason:
            row.state, row.detail = "rejected", reason
        else:
            accepted.append(path)
    skip = (gr.skip(),) * 6
    yield progress_html(list(rows.values())), *skip
    if accepted:
        engine.wait()
        events: queue.Queue[Progress] = queue.Queue()
        failure: list[str] = []

        def run() -> None:
            try:
                folio.ingest(accepted, on_progress=events.put)
            except Exception as exc:  # noqa: BLE001 - shown in the page, logged in full
                logger.exception("ingestion failed")
                failure.append(f"{type(exc).__name__}: {exc}".splitlines()[0])

        worker = threading.Thread(target=run, name="folio-ingest", daemon=True)
        worker.start()
        while worker.is_alive() or not events.empty():
            if drain_progress(rows, events, seconds=0.3):
                yield progress_html(list(rows.values())), *skip
        for row in rows.values():
            if row.state not in FINISHED:
                row.state, row.detail = "failed", failure[0] if failure else "not finished"
    done = list(rows.values())
    yield progress_html(done), *library(folio, selected), None, done


def on_delete(
    engine: Engine,
    doc_id: str | None,
    confirmed: bool,
    selected: list[str] | None,
    uploads: list[UploadRow] | None,
    view: dict | None,
    answers: list | None,
    request: gr.Request,
) -> tuple:
    """Delete the chosen document once the page's confirm dialog said yes; a cancelled dialog
    changes nothing (the choice stays).

    Returns: note, the 4 library outputs, then the `after_delete` outputs.
    """
    folio = me(engine, request)
    if not doc_id:
        return "Choose a document to delete.", *(gr.skip(),) * 10
    if not confirmed:
        return "", *(gr.skip(),) * 10
    removed, errors = engine.delete(folio, [doc_id])
    note = (
        f"Deleted **{markdown_text(removed[0].file_name)}**." if removed else f"⚠️ {errors[0]}"
    )
    return note, *library(folio, selected), *after_delete(folio, removed, uploads, view, answers)


def on_remove_failed(
    engine: Engine,
    confirmed: bool,
    selected: list[str] | None,
    uploads: list[UploadRow] | None,
    view: dict | None,
    answers: list | None,
    request: gr.Request,
) -> tuple:
    """Delete every failed document of this user (one confirm for all), through the same path
    as a single delete; failed and refused rows leave the progress box.

    Returns: note, the 4 library outputs, then the `after_delete` outputs.
    """
    if not confirmed:
        return "", *(gr.skip(),) * 10
    folio = me(engine, request)
    failed = [d.doc_id for d in folio.documents() if d.status != "ok"]
    removed, errors = engine.delete(folio, failed)
    note = f"Removed {len(removed)} failed upload{'s' if len(removed) != 1 else ''}."
    if errors:
        note += f" ⚠️ {len(errors)} could not be removed: {errors[0]}"
    rows = without_failures(uploads or [])
    return note, *library(folio, selected), *after_delete(folio, removed, rows, view, answers)


def after_delete(
    folio: Folio,
    removed: Sequence[Any],
    uploads: list[UploadRow] | None,
    view: dict | None,
    answers: list | None,
) -> tuple:
    """What a deletion changes beyond the library: the deleted documents' progress rows go, the
    evidence viewer stops showing their pages (naming the file) and the figure panel loses
    their figures.

    Returns: progress box, uploads state, page image, page caption, figures, view state.
    """
    gone = {d.doc_id for d in removed}
    rows = without_documents(uploads or [], gone)
    image = caption = figures = gr.skip()
    if view:
        if view["doc_id"] in gone:
            image, caption = None, deleted_caption(view.get("file_name", ""), view["page"])
        answer = _answer_of(answers, view["turn"])
        if answer is not None:
            gallery = figure_gallery(folio, answer)
            figures = gr.Gallery(value=gallery, visible=bool(gallery))
    return progress_html(rows), rows, image, caption, figures, view


# --------------------------------------------------------------------------------- the chat


def on_ask(
    engine: Engine,
    text: str,
    history: list | None,
    answers: list | None,
    selected: list[str] | None,
    context: str,
    sampler: bool,
    mode: str,
    k: float,
    budget: float,
    urag: bool,
    refrag: bool,
    answerability: bool,
    typed: bool,
    compute: bool,
    request: gr.Request,
) -> Iterator[tuple]:
    """Answer a question in the chat: the stage running now until the answer streams in, then
    the answer with its chips, the transparency panel and the first chip's page. Ask is
    disabled until the question ends.

    Yields: question box, chat, answers state, summary, tables, the 5 `show_chip` outputs, and
    the Ask button.
    """
    folio = me(engine, request)
    question = (text or "").strip()
    if not question:
        yield (gr.skip(),) * 11
        return
    options = AskOptions(
        context or "retrieved", bool(sampler), mode or "default", int(k), int(budget),
        bool(urag), bool(refrag), bool(answerability), bool(typed), bool(compute),
    )  # fmt: skip
    before = list(history or [])
    turn = len(history_to_turns(before))
    chat = [*before, {"role": "user", "content": question}]
    panels = (gr.skip(),) * 7
    session = getattr(request, "session_hash", None)
    engine.should_stop(session)  # a Stop from before this question does not stop it
    shown = [*chat, {"role": "assistant", "content": ""}]
    if engine.loading:
        loading = {"role": "assistant", "content": "_Loading the models (first question only)…_"}
        shown = [*chat, loading]
        yield "", shown, gr.skip(), *panels, gr.Button(interactive=False)
        engine.wait()
    last = 0.0
    replies = engine.ask(folio, question, before, doc_ids=selected or None, options=options)
    for reply in replies:
        # NOTE: Stop is answered here, in this handler's own stream of updates: a cancelled
        # handler could still deliver an update after a separate "stopped" one.
        if engine.should_stop(session):
            replies.close()
            yield "", mark_stopped(shown, turn), gr.skip(), *panels, gr.Button(interactive=True)
            return
        shown = [*chat, {"role": "assistant", "content": reply.text}]
        if reply.answer is None:
            # A stage's status line always shows; streamed text at most every _STREAM_EVERY_S.
            if is_status(reply.text) or time.monotonic() - last >= _STREAM_EVERY_S:
                last = time.monotonic()
                yield "", shown, gr.skip(), *panels, gr.Button(interactive=False)
            continue
        answer = reply.answer
        kept = list(answers or [])[:turn]
        kept += [None] * (turn - len(kept))
        summary = summary_markdown(answer.stats) if answer.ok else error_message(answer.error or "")
        tables = transparency_html(answer) if answer.ok else ""
        chip = show_chip(folio, answer, turn, 0) if citation_chips(answer) else (gr.skip(),) * 5
        yield "", shown, [*kept, answer], summary, tables, *chip, gr.Button(interactive=True)


def on_stop(
    engine: Engine, history: list | None, answers: list | None, request: gr.Request
) -> tuple:
    """Stop the question running in this browser session: `on_ask` ends at its next update
    (within `STATUS_EVERY_S`, or the next generated token), marking the answer so far as
    stopped, and Ask comes back.

    Returns: Ask button.
    """
    if mark_stopped(history, len(answers or [])) != list(history or []):  # a question is open
        engine.request_stop(getattr(request, "session_hash", None))
    return gr.Button(interactive=True)


def on_clear() -> tuple:
    """A new conversation.

    Returns: chat, answers state, view state, page image, page caption, figures, Ask button.
    """
    return [], [], None, None, PAGE_HINT, gr.Gallery(value=[], visible=False), gr.Button(
        interactive=True
    )


# ----------------------------------------------------------------------- the evidence viewer


def show_chip(folio: Folio, answer: Answer, turn: int, index: int) -> tuple:
    """Show the page of chip `index` of the answer of `turn`, its regions highlighted.

    Returns: page image, page caption, figures, view state, the tabs (on Evidence).
    """
    chips = citation_chips(answer)
    if not 0 <= index < len(chips):
        return (gr.skip(),) * 5
    chip = chips[index]
    highlights: dict[int, list[BBox]] = {}
    for other in chips:
        if other.doc_id == chip.doc_id:
            highlights.setdefault(other.page, []).extend(other.boxes)
    view = {
        "doc_id": chip.doc_id,
        "file_name": chip.file_name,
        "page": chip.page,
        "turn": turn,
        "chip": index,
        "highlights": highlights,
    }
    image, caption = render(folio, view, chip)
    gallery = figure_gallery(folio, answer)
    return image, caption, gr.Gallery(value=gallery, visible=bool(gallery)), view, gr.Tabs(
        selected="evidence"
    )


def render(folio: Folio, view: dict, chip: Chip | None) -> tuple[Any, str]:
    """(image, caption) of the page `view` points at; a deleted document is named."""
    if not folio.owns(view["doc_id"]):
        return None, deleted_caption(view.get("file_name", ""), view["page"])
    try:
        rendered = page_view(folio, view["doc_id"], view["page"], view["highlights"])
    except (LookupError, ValueError) as exc:
        return None, f"⚠️ {markdown_text(str(exc))}"
    return rendered.image, page_caption(rendered, chip)


def on_chip(engine: Engine, ref: str, answers: list | None, request: gr.Request) -> tuple:
    """A click on a citation chip (its reference "<turn>-<chip>|nonce" in a hidden box).

    Returns: the 5 `show_chip` outputs.
    """
    parsed = chip_ref(ref)
    if parsed is None:
        return (gr.skip(),) * 5
    turn, index = parsed
    answer = _answer_of(answers, turn)
    if answer is None:
        message = "That answer is no longer in this conversation."
        return None, message, gr.skip(), gr.skip(), gr.skip()
    return show_chip(me(engine, request), answer, turn, index)


def on_turn_page(
    engine: Engine, view: dict | None, answers: list | None, step: int, request: gr.Request
) -> tuple:
    """Show the page `step` pages away from the one shown.

    Returns: page image, page caption, view state.
    """
    if not view:
        return gr.skip(), gr.skip(), gr.skip()
    folio = me(engine, request)
    if not folio.owns(view["doc_id"]):
        return None, deleted_caption(view.get("file_name", ""), view["page"]), view
    try:
        count = page_view(folio, view["doc_id"], view["page"]).page_count
    except (LookupError, ValueError) as exc:
        return None, f"⚠️ {markdown_text(str(exc))}", view
    page = view["page"] + step
    if not 1 <= page <= count:
        return gr.skip(), gr.skip(), view
    view = {**view, "page": page}
    answer = _answer_of(answers, view["turn"])
    chips = citation_chips(answer) if answer is not None else []
    chip = next((c for c in chips if c.doc_id == view["doc_id"] and c.page == page), None)
    image, caption = render(folio, view, chip)
    return image, caption, view


def on_prev_page(
    engine: Engine, view: dict | None, answers: list | None, request: gr.Request
) -> tuple:
    """The page before (see `on_turn_page`)."""
    return on_turn_page(engine, view, answers, -1, request)


def on_next_page(
    engine: Engine, view: dict | None, answers: list | None, request: gr.Request
) -> tuple:
    """The page after (see `on_turn_page`)."""
    return on_turn_page(engine, view, answers, +1, request)


def _answer_of(answers: list | None, turn: int) -> Answer | None:
    return answers[turn] if answers and 0 <= turn < len(answers) else None


# ---------------------------------------------------------------------- loading and status


def status_update(engine: Engine) -> tuple:
    """The background load's status line, and whether its timer keeps ticking.

    Returns: status note, timer.
    """
    loading = engine.loading
    note = engine.status if loading else ""
    return (
        f'<div class="folio-note">{html.escape(note)}</div>' if note else "",
        gr.Timer(active=loading),
    )


def on_load(engine: Engine, selected: list[str] | None, request: gr.Request) -> tuple:
    """The page opens: its user's library and the load status.

    Returns: the 4 library outputs, status note, timer.
    """
    return *library(me(engine, request), selected), *status_update(engine)
