"""The web app (`folio serve`): library, streaming chat with citation chips, evidence viewer,
transparency panel.

`build_ui(folio)` builds the Gradio Blocks; only `serve` launches them (theme, CSS and the small
script that makes citation chips clickable go into `launch()` on Gradio 6). Gradio is an edge:
its message format is converted here (`history_to_turns`) and nothing from `gradio` reaches
`pipeline/`. The logic the page shows (answer text with chips, chips to page regions, page
images with highlights, stats tables, ingestion progress) lives in plain functions that tests
call without a browser; the handlers inside `build_ui` only wire them to components.

Each question is answered on its own (the answering model sees no earlier turns); the
conversation, and the answers its chips point into, are kept per browser session.
"""

from __future__ import annotations

import hmac
import html
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import ValidationError

from app.api import Folio
from pipeline.answering.answer import Answer, AnswerStats
from pipeline.ingestion.ingest import IngestResult, Progress, count_pages
from pipeline.library.documents import DocumentInfo
from pipeline.library.owners import check_login, list_users
from pipeline.library.search import SearchHit
from pipeline.library.viewer import PageImage, figure_assets, render_page

logger = logging.getLogger(__name__)

__all__ = [
    "AskOptions",
    "Chip",
    "Reply",
    "Turn",
    "build_ui",
    "citation_chips",
    "format_answer",
    "history_to_turns",
    "mark_stopped",
    "respond",
    "serve",
]

BBox = tuple[float, float, float, float]
CHIP_ANCHOR = "folio-cite-"
_MARKER = re.compile(r"\s*\[\d+(?:\s*[,;]\s*\d+)*\]")
_PAGE_DPI = 130
_READING = "_Searching the library and reading the evidence…_"
_SNIPPET = 220

CONTEXT_CHOICES = [
    ("Retrieved passages", "retrieved"),
    ("First pages (no retrieval)", "first-pages"),
    ("None (the model alone)", "none"),
]
MODE_CHOICES = [
    ("Configured default", "default"),
    ("BM25", "bm25"),
    ("Dense (MiniLM)", "dense"),
    ("Hybrid", "hybrid"),
    ("Hybrid + feedback (PRF)", "hybrid-prf"),
    ("SPLADE", "splade"),
]
STAGE_NAMES = {
    "retrieve": "Retrieve (chunks)",
    "candidates": "Candidates (blocks)",
    "sample": "Sample (WuKong)",
    "budget": "Budget (rank order)",
    "first-pages": "First pages",
    "screen": "Screen (sentences addressed to the model)",
    "prompt": "Prompt (evidence / all tokens)",
    "generate": "Generate (tokens / most allowed)",
}


# ------------------------------------------------------------------------------- the chat


@dataclass(frozen=True)
class Turn:
    """One exchange of the conversation, as plain text."""

    question: str
    answer: str


@dataclass(frozen=True)
class AskOptions:
    """The stage switches of the transparency panel, for one question.

    Attributes:
        context: Evidence source: "retrieved", "first-pages" or "none".
        sampler: WuKong sampling of the retrieved blocks (off: chunks in rank order).
        mode: Retrieval mode, or "default" for the configured one.
        k: Chunks retrieved.
        budget: Evidence tokens in the prompt.
        urag: URaG: the model's first layers choose the evidence its deeper layers read.
        refrag: REFRAG: evidence chunks enter the model as one vector each (but the most
            question-like ones).
    """

    context: str = "retrieved"
    sampler: bool = True
    mode: str = "default"
    k: int = 20
    budget: int = 1000
    urag: bool = False
    refrag: bool = False

    def overrides(self) -> dict[str, Any]:
        """The `Folio.ask` overrides these switches stand for."""
        out: dict[str, Any] = {
            "context": self.context,
            "sampler": bool(self.sampler),
            "k": int(self.k),
            "budget": int(self.budget),
            "use_urag": bool(self.urag),
            "use_refrag": bool(self.refrag),
        }
        if self.mode and self.mode != "default":
            out["mode"] = self.mode
        return out


@dataclass(frozen=True)
class Reply:
    """One update of the assistant's message: its Markdown so far; `answer` on the last one."""

    text: str
    answer: Answer | None = None


@dataclass(frozen=True)
class Chip:
    """A citation chip: the cited regions of one page.

    Attributes:
        label: What the chip shows, e.g. "p. 5" (with the file name when an answer cites
            several documents).
        doc_id: Document id.
        file_name: The PDF's file name.
        page: 1-based page.
        boxes: The cited regions, in PDF points of the displayed page.
        quotes: The supporting text of each region.
    """

    label: str
    doc_id: str
    file_name: str
    page: int
    boxes: tuple[BBox, ...]
    quotes: tuple[str, ...]


def history_to_turns(history: Sequence[Mapping[str, Any]] | None) -> list[Turn]:
    """Gradio chat history (messages with string or typed-block content) as our own turns.

    A user message opens a turn; the assistant messages after it are its answer. Files and
    other non-text content are skipped.
    """
    turns: list[Turn] = []
    question: str | None = None
    answer: list[str] = []
    for message in history or ():
        role = message.get("role") if isinstance(message, Mapping) else None
        text = _content_text(message.get("content")) if role else ""
        if role == "user":
            if question is not None:
                turns.append(Turn(question, "\n".join(answer)))
            question, answer = text, []
        elif role == "assistant" and question is not None:
            answer.append(text)
    if question is not None:
        turns.append(Turn(question, "\n".join(answer)))
    return turns


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, Sequence):
        return "".join(_content_text(part) for part in content)
    return ""


def citation_chips(answer: Answer) -> list[Chip]:
    """The answer's citations grouped by page, in the order they are first cited."""
    pages: dict[tuple[str, int], list] = {}
    for citation in answer.citations:
        pages.setdefault((citation.doc_id, citation.page), []).append(citation)
    several = len({doc for doc, _ in pages}) > 1
    chips = []
    for (doc_id, page), cites in pages.items():
        name = cites[0].file_name
        label = f"{_short_name(name)} p. {page}" if several else f"p. {page}"
        chips.append(
            Chip(
                label=label,
                doc_id=doc_id,
                file_name=name,
                page=page,
                boxes=tuple(tuple(c.bbox) for c in cites),
                quotes=tuple(c.quote for c in cites),
            )
        )
    return chips


def _short_name(file_name: str, limit: int = 24) -> str:
    stem = Path(file_name).stem
    return stem if len(stem) <= limit else stem[: limit - 1] + "…"


def format_answer(answer: Answer, turn: int) -> str:
    """The assistant's message for a finished answer: its text, then one chip per cited page.

    Chips are Markdown links to `#folio-cite-<turn>-<chip>`; the page's script turns a click on
    one into the evidence viewer showing that page.

    Args:
        answer: The answer (possibly failed or "Not answerable").
        turn: Its position in the conversation (0-based), which the chips refer back to.
    """
    if answer.error is not None:
        return error_message(answer.error)
    if answer.not_answerable:
        return (
            "**Not answerable.** The documents searched do not seem to hold the answer; "
            "try other words, or choose the documents to ask about in the library panel."
        )
    text = _markdown_text(answer.plain) or "(the model returned an empty answer)"
    chips = citation_chips(answer)
    if not chips:
        return text
    links = " ".join(
        f'[[{chip.label}]](#{CHIP_ANCHOR}{turn}-{i} "{_title(chip)}")'
        for i, chip in enumerate(chips)
    )
    return f"{text}\n\n{links}"


def _title(chip: Chip) -> str:
    quote = " ".join(chip.quotes[0].split()) if chip.quotes else ""
    quote = quote if len(quote) <= 140 else quote[:139] + "…"
    return f"{chip.file_name}, page {chip.page}: {quote}".replace('"', "'").replace("\\", "/")


def _markdown_text(text: str) -> str:
    """Model text shown as text: Markdown and HTML in it are escaped, not rendered."""
    escaped = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", escaped)


def error_message(reason: str) -> str:
    """One clear message for a question that failed (never a traceback)."""
    first = (reason or "unknown error").strip().splitlines()[0]
    return f"⚠️ **Could not answer.** {_markdown_text(first)}"


def mark_stopped(
    history: Sequence[Mapping[str, Any]] | None, answered: int
) -> list[dict[str, Any]]:
    """The chat history after Stop: an answer still streaming is marked as stopped.

    Args:
        history: The Gradio chat history.
        answered: How many turns have a finished answer (a finished one is left alone).
    """
    out = [dict(m) for m in history or ()]
    if len(history_to_turns(out)) <= answered or not out or out[-1].get("role") != "assistant":
        return out
    text = _content_text(out[-1].get("content"))
    stopped = (
        "_Stopped before the answer began._" if text in (_READING, "") else f"{text} _(stopped)_"
    )
    out[-1] = {"role": "assistant", "content": stopped}
    return out


def chip_ref(ref: str) -> tuple[int, int] | None:
    """(turn, chip) from a clicked chip's reference "<turn>-<chip>[|nonce]", or None."""
    match = re.fullmatch(r"\s*(\d+)-(\d+)(?:\|.*)?\s*", ref or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def respond(
    message: str,
    history: Sequence[Mapping[str, Any]] | None,
    folio: Folio,
    *,
    doc_ids: Sequence[str] | None = None,
    options: AskOptions | None = None,
) -> Iterator[Reply]:
    """Answer a chat message, streaming: partial text as it is generated, then the final reply.

    Args:
        message: The user's question.
        history: The Gradio chat history before this message (its turn count numbers the
            answer's chips).
        folio: The library to answer from.
        doc_ids: Only these documents; None or empty: the whole library.
        options: Stage switches (default: the configured stages).

    Yields:
        `Reply`s: the assistant's Markdown so far; the last one carries the `Answer` (failed
        questions carry one with `error` set, and their text is one clear message).
    """
    turn = len(history_to_turns(history))
    question = (message or "").strip()
    if not question:
        reason = "Type a question first."
        yield Reply(error_message(reason), Answer.failed(question, reason))
        return
    overrides = options.overrides() if options is not None else {}
    partial = ""
    try:
        for part in folio.ask_stream(
            question, doc_ids=list(doc_ids) if doc_ids else None, **overrides
        ):
            if isinstance(part, str):
                partial += part
                yield Reply(_markdown_text(_MARKER.sub("", partial)) or "…")
            else:
                yield Reply(format_answer(part, turn), part)
                return
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = f"invalid setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    except (ValueError, LookupError, TypeError, FileNotFoundError) as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - the page shows one line; the log keeps the rest
        logger.exception("question failed: %s", question)
        detail = (str(exc).strip().splitlines() or [""])[0]
        reason = (
            f"internal error ({type(exc).__name__}: {detail}); the details are in the server log"
        )
    yield Reply(error_message(reason), Answer.failed(question, reason, doc_ids=doc_ids or ()))


# ------------------------------------------------------------------------- the side panels


def page_view(
    folio: Folio, doc_id: str, page: int, highlights: Mapping[int, Sequence[BBox]] | None = None
) -> PageImage:
    """Render a page of one of `folio`'s user's documents with the regions cited on it
    highlighted.

    Raises:
        LookupError: Not a document of this user.
    """
    if not folio.owns(doc_id):
        raise LookupError(f"no document {doc_id[:12]} in your library")
    boxes = (highlights or {}).get(page, ())
    return render_page(folio.library, doc_id, page, boxes, dpi=_PAGE_DPI)


def page_caption(view: PageImage, chip: Chip | None = None) -> str:
    """The line above the page image."""
    where = f"**{_markdown_text(view.file_name)}**, page {view.page} of {view.page_count}"
    if view.source == "thumbnail":
        where += " (low-resolution preview: the library keeps no copy of this PDF)"
    if chip is not None and chip.page == view.page and chip.doc_id == view.doc_id:
        quotes = " ".join(
            f"“{_markdown_text(' '.join(q.split()))}”" for q in chip.quotes if q.strip()
        )
        return (
            f"{where}. Highlighted: {len(chip.boxes)} cited region(s).\n\n> {quotes}"
            if quotes
            else where
        )
    return where


def figure_gallery(folio: Folio, answer: Answer) -> list[tuple[str, str]]:
    """(image path, caption) of the figures and tables among the evidence the model read."""
    items = [e for e in answer.evidence if e.kind in ("figure", "table")]
    assets = figure_assets(folio.library, [b for e in items for b in e.block_ids])
    gallery = []
    for e in items:
        path = next((assets[b] for b in e.block_ids if b in assets), None)
        if path is not None:
            text = " ".join(e.text.split())
            gallery.append((str(path), f"[{e.number}] {e.file_name} p. {e.page}: {text[:120]}"))
    return gallery


def summary_markdown(stats: AnswerStats | None) -> str:
    """Headline costs of an answer."""
    if stats is None:
        return "No statistics: the question failed before answering."
    evidence = {"retrieved": "retrieved passages", "first-pages": "first pages", "none": "none"}
    sampler = "WuKong sampler on" if stats.sampler else "sampler off"
    lines = [
        f"**Prompt** {stats.prompt_tokens} tokens · **First token** {stats.ttft_ms / 1000:.2f} s · "
        f"**Decode** {stats.tokens_per_s:.1f} tokens/s · **Generated** {stats.new_tokens} tokens · "
        f"**Total** {stats.total_ms / 1000:.2f} s",
        f"Model `{Path(stats.model).name or stats.model}` · evidence: "
        f"{evidence.get(stats.context, stats.context)} · {sampler}",
    ]
    urag = stats.stage("urag")
    if urag is not None:
        pages = ", ".join(str(p) for p in sorted(set(stats.urag_pages))) or "none"
        lines.append(
            f"**URaG** the deeper layers read {urag.kept_items} of {urag.total_items} evidence "
            f"items ({' '.join(f'[{n}]' for n in stats.urag_kept)}; pages {pages})"
        )
    refrag = stats.stage("refrag")
    if refrag is not None:
        lines.append(
            f"**REFRAG** {refrag.total_items - refrag.kept_items} of {refrag.total_items} evidence "
            f"chunks read as one vector each: {refrag.total_tokens} prompt positions became "
            f"{refrag.kept_tokens} ({stats.refrag_ratio:.1f}× fewer)"
        )
    screen = stats.stage("screen")
    if screen is not None and screen.kept_items < screen.total_items:
        left = screen.total_items - screen.kept_items
        lines.append(
            f"**Screened** {left} sentence{'s' if left != 1 else ''} of the evidence addressed "
            "the model and were left out of the prompt"
        )
    return "\n\n".join(lines)


STAGE_HEADERS = ["Stage", "Kept", "of", "Tokens kept", "of", "ms"]
EVIDENCE_HEADERS = ["[n]", "Document", "Page", "Kind", "Score", "Tokens", "Deep layers", "Text"]
RETRIEVED_HEADERS = ["#", "Document", "Page", "Kind", "Score", "Text"]


def stage_rows(stats: AnswerStats | None) -> list[list[Any]]:
    """One row per stage: what it kept of what it was given, and its time."""
    if stats is None:
        return []
    return [
        [
            STAGE_NAMES.get(s.name, s.name),
            s.kept_items,
            s.total_items,
            s.kept_tokens,
            s.total_tokens,
            round(s.ms, 1),
        ]
        for s in stats.stages
    ]


def evidence_rows(answer: Answer) -> list[list[Any]]:
    """The numbered evidence the model read (the sampled blocks); with URaG on, whether the
    deeper layers read each item."""
    stats = answer.stats
    urag_on = stats is not None and stats.stage("urag") is not None
    kept = set(stats.urag_kept) if urag_on else set()
    return [
        [
            f"[{e.number}]",
            e.file_name,
            e.page,
            e.kind,
            round(e.score, 3),
            e.tokens,
            ("read" if e.number in kept else "dropped") if urag_on else "all",
            _snippet(e.text),
        ]
        for e in answer.evidence
    ]


def retrieved_rows(hits: Sequence[SearchHit]) -> list[list[Any]]:
    """The retrieved chunks in rank order."""
    return [
        [rank, h.file_name, h.page, h.kind, round(h.score, 3), _snippet(h.text)]
        for rank, h in enumerate(hits, 1)
    ]


def table_html(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str
) -> str:
    """A titled, scrollable HTML table (cells escaped); `empty` when there are no rows."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    table = (
        f'<div class="folio-scroll"><table class="folio-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
        if rows
        else f'<div class="folio-empty">{html.escape(empty)}</div>'
    )
    return f'<div class="folio-table-title">{html.escape(title)}</div>{table}'


def transparency_html(answer: Answer | None, hits: Sequence[SearchHit] = ()) -> str:
    """The stage, evidence and retrieved-chunk tables of an answer."""
    if answer is None:
        return ""
    return "".join(
        [
            table_html("Stages", STAGE_HEADERS, stage_rows(answer.stats), "No stage ran."),
            table_html(
                "Evidence the model read (sampled blocks)",
                EVIDENCE_HEADERS,
                evidence_rows(answer),
                "No evidence: the model answered from the question alone.",
            ),
            table_html(
                "Retrieved chunks",
                RETRIEVED_HEADERS,
                retrieved_rows(hits),
                "Retrieval was off for this question."
                if answer.stats is not None and answer.stats.context != "retrieved"
                else "No chunks retrieved.",
            ),
        ]
    )


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SNIPPET else flat[: _SNIPPET - 1] + "…"


# ------------------------------------------------------------------------------ the library


@dataclass
class UploadRow:
    """One uploaded file's state while it is checked, parsed and indexed."""

    name: str
    state: str = "queued"  # queued, parsing, indexing, added, unchanged, failed, rejected
    pages_done: int = 0
    page_count: int = 0
    ocr_pages: int = 0
    detail: str = ""

    @property
    def fraction(self) -> float:
        if self.state in ("added", "unchanged", "failed", "rejected"):
            return 1.0
        if self.state == "indexing":
            return 0.95
        return 0.9 * self.pages_done / self.page_count if self.page_count else 0.0

    @property
    def label(self) -> str:
        if self.state == "queued":
            return "Waiting"
        if self.state == "parsing":
            ocr = f", OCR on {self.ocr_pages}" if self.ocr_pages else ""
            return f"Parsing page {self.pages_done} of {self.page_count}{ocr}"
        if self.state == "indexing":
            return "Storing and indexing"
        if self.state == "added":
            return f"Ready: {self.detail}"
        if self.state == "unchanged":
            return "Already in the library"
        return f"{'Failed' if self.state == 'failed' else 'Not added'}: {self.detail}"


def check_upload(path: Path, *, max_mb: float, max_pages: int) -> str | None:
    """Why an uploaded file is refused (size, type or page limit), or None when it is accepted."""
    size_mb = path.stat().st_size / 1e6 if path.exists() else 0.0
    if not path.exists():
        return "the upload did not arrive; try again"
    if path.suffix.lower() != ".pdf":
        return "not a PDF (only .pdf files are accepted)"
    if size_mb > max_mb:
        return (
            f"{size_mb:.0f} MB, over the upload limit of {max_mb:g} MB (FOLIO_SERVE__MAX_UPLOAD_MB)"
        )
    pages = count_pages([path])
    if pages > max_pages:
        return (
            f"{pages} pages, over the upload limit of {max_pages} (FOLIO_SERVE__MAX_UPLOAD_PAGES)"
        )
    return None


def apply_progress(rows: Mapping[Path, UploadRow], event: Progress) -> None:
    """Update the row of the file an ingestion event is about."""
    row = rows.get(event.path)
    if row is None:
        return
    if event.kind == "page":
        row.pages_done, row.page_count, row.ocr_pages = (
            event.pages_done,
            event.page_count,
            event.ocr_pages,
        )
        row.state = "indexing" if event.pages_done >= event.page_count else "parsing"
    elif event.result is not None:
        _finish(row, event.result)


def drain_progress(
    rows: Mapping[Path, UploadRow], events: queue.Queue[Progress], *, seconds: float
) -> bool:
    """Apply the ingestion events that arrive within `seconds`; whether any did.

    NOTE: bounded in time, not "until the queue is quiet": a parser sends page events faster
    than any quiet gap, and the page would then show nothing until the document is parsed.
    """
    deadline = time.monotonic() + seconds
    changed = False
    while (left := deadline - time.monotonic()) > 0:
        try:
            apply_progress(rows, events.get(timeout=left))
        except queue.Empty:
            break
        changed = True
    return changed


def _finish(row: UploadRow, result: IngestResult) -> None:
    row.state = result.status if result.status in ("added", "unchanged", "failed") else "failed"
    if result.status == "added":
        row.detail = f"{result.pages} pages, {result.chunks} passages"
    elif result.status == "failed":
        row.detail = (result.error or "unknown error").removeprefix(f"{row.name}: ")


def progress_html(rows: Sequence[UploadRow], status: str = "") -> str:
    """The per-document progress bars of an upload."""
    if not rows:
        return ""
    lines = []
    for row in rows:
        bad = row.state in ("failed", "rejected")
        lines.append(
            f'<div class="folio-upload{" folio-bad" if bad else ""}">'
            f'<div class="folio-upload-name">{html.escape(row.name)}</div>'
            f'<progress max="100" value="{round(row.fraction * 100)}"></progress>'
            f'<div class="folio-upload-state">{html.escape(row.label)}</div></div>'
        )
    note = f'<div class="folio-note">{html.escape(status)}</div>' if status else ""
    return f'<div class="folio-uploads">{"".join(lines)}{note}</div>'


def documents_html(documents: Sequence[DocumentInfo]) -> str:
    """The library's documents: file, pages, passages and status (errors spelled out)."""
    if not documents:
        return '<div class="folio-empty">The library is empty: add PDFs above.</div>'
    rows = []
    for d in documents:
        title = f'<div class="folio-doc-title">{html.escape(d.title)}</div>' if d.title else ""
        if d.status == "ok":
            status = '<span class="folio-ok">ready</span>'
        else:
            status = '<span class="folio-failed">failed</span>'
            reason = (d.error or "unknown error").removeprefix(f"{d.file_name}: ")
            title += f'<div class="folio-failed-reason">{html.escape(reason)}</div>'
        rows.append(
            f"<tr><td><div>{html.escape(d.file_name)}</div>{title}</td>"
            f"<td>{d.pages}</td><td>{d.chunks}</td><td>{status}</td></tr>"
        )
    return (
        '<table class="folio-docs"><thead><tr><th>Document</th><th>Pages</th><th>Passages</th>'
        f"<th>Status</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def document_choices(
    documents: Sequence[DocumentInfo], *, ready_only: bool
) -> list[tuple[str, str]]:
    """(label, doc id) pairs for the document pickers."""
    return [
        (
            f"{d.file_name} ({d.pages} p.)" if d.status == "ok" else f"{d.file_name} (failed)",
            d.doc_id,
        )
        for d in documents
        if d.status == "ok" or not ready_only
    ]


# ----------------------------------------------------------------------------- the engine


@dataclass
class Engine:
    """The Folio behind the page, with background model loading and a status line.

    The search index and the answering models load in a background thread (`preload`) so the
    page comes up at once; a question or an upload waits for that load to finish.
    """

    folio: Folio
    status: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def preload(self) -> threading.Thread:
        """Start loading the index and models in the background."""
        self._lock.acquire()
        thread = threading.Thread(target=self._load, name="folio-preload", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        try:
            self.status = "Loading the search index…"
            self.folio.index.retriever  # noqa: B018 - loads (or builds) the index
            self.status = "Loading the answering model…"
            answerer = self.folio.answerer
            generator = answerer.generator()
            answerer.sampler(answerer.config.sampler, generator)
            self.status = ""
        except Exception as exc:  # noqa: BLE001 - the first question reports it again
            logger.warning("preloading failed (%s); models load on the first question", exc)
            self.status = ""
        finally:
            self._lock.release()

    @property
    def loading(self) -> bool:
        return self._lock.locked()

    def wait(self) -> None:
        """Block until a background load (if any) has finished."""
        with self._lock:
            pass


# ------------------------------------------------------------------------------- the page


def build_ui(
    folio: Folio,
    engine: Engine | None = None,
    *,
    accounts: bool = False,
    local_login: str | None = None,
) -> gr.Blocks:
    """The Folio web app as Gradio Blocks (not launched; `serve` launches it).

    Args:
        folio: The library the app serves.
        engine: Background model loading; a new idle one when None.
        accounts: Logins are the library's accounts (`folio user add`): each session sees,
            adds, asks about and deletes only its user's documents.
        local_login: The name of the single `serve.auth` login, which sees the local user's
            documents (as without a login).
    """
    engine = engine or Engine(folio)

    def mine(request: gr.Request | None) -> Folio:
        """The library as the signed-in user of this request sees it."""
        name = getattr(request, "username", None)
        if not accounts or name is None or name == local_login:
            return folio.as_user(None) if accounts else folio
        return folio.as_user(name)

    settings = folio.settings
    limits = settings.serve
    answer_cfg = settings.answer

    with gr.Blocks(title="Folio", analytics_enabled=False, fill_width=True) as demo:
        session = gr.State([])  # list[Answer | None], one per turn of this browser's conversation
        view = gr.State(None)  # the page shown: {"doc_id", "page", "turn", "chip", "highlights"}

        gr.HTML(
            '<div class="folio-header"><span class="folio-logo">Folio</span>'
            '<span class="folio-tagline">Ask questions about your PDFs; every answer cites '
            "the page and the region on the page.</span></div>"
        )
        with gr.Row(equal_height=False):
            # ---------------------------------------------------------------- library
            with gr.Column(scale=3, min_width=280, elem_classes="folio-panel"):
                gr.Markdown("### Library")
                upload = gr.File(
                    label="Add PDFs",
                    file_count="multiple",
                    file_types=[".pdf"],
                    height=120,
                    elem_id="folio-upload",
                )
                gr.Markdown(
                    f"Drop one or more PDFs (up to {limits.max_upload_mb:g} MB and "
                    f"{limits.max_upload_pages} pages each); each is parsed and indexed once.",
                    elem_classes="folio-hint",
                )
                status_note = gr.HTML("", elem_id="folio-status")
                status_timer = gr.Timer(1.0, active=False)
                progress = gr.HTML("", elem_id="folio-progress")
                doc_table = gr.HTML("", elem_id="folio-documents")
                ask_about = gr.CheckboxGroup(
                    label="Ask about",
                    info="None checked: the whole library.",
                    choices=[],
                    elem_id="folio-ask-about",
                )
                with gr.Accordion("Delete a document", open=False):
                    to_delete = gr.Dropdown(
                        label="Document", choices=[], value=None, elem_id="folio-delete-doc"
                    )
                    delete = gr.Button(
                        "Delete from the library", variant="stop", size="sm", elem_id="folio-delete"
                    )
                    delete_note = gr.Markdown("", elem_id="folio-delete-note")

            # ------------------------------------------------------------------- chat
            with gr.Column(scale=5, min_width=360, elem_classes="folio-panel"):
                chatbot = gr.Chatbot(
                    label="Conversation",
                    height=560,
                    elem_id="folio-chat",
                    elem_classes="folio-chat",
                    placeholder="Ask a question about the documents in your library. Answers "
                    "stream in, with chips such as **[p. 5]** that open the cited page.",
                    buttons=["copy"],
                    feedback_options=None,
                    group_consecutive_messages=False,
                )
                with gr.Row(equal_height=True):
                    message = gr.Textbox(
                        placeholder="Ask a question…",
                        show_label=False,
                        lines=1,
                        max_lines=4,
                        scale=6,
                        autofocus=True,
                        elem_id="folio-question",
                    )
                    send = gr.Button(
                        "Ask", variant="primary", scale=1, min_width=70, elem_id="folio-ask"
                    )
                    stop = gr.Button(
                        "Stop", variant="secondary", scale=1, min_width=70, elem_id="folio-stop"
                    )
                clear = gr.Button("New conversation", size="sm", variant="secondary")
                cite_ref = gr.Textbox(visible="hidden", elem_id="folio-cite-ref")

            # ------------------------------------------------ evidence and transparency
            with (
                gr.Column(scale=5, min_width=360, elem_classes="folio-panel"),
                gr.Tabs(selected="evidence") as tabs,
            ):
                with gr.Tab("Evidence", id="evidence"):
                    page_info = gr.Markdown(
                        "Click a citation chip such as **[p. 5]** in an answer to see the "
                        "cited page here, with the supporting regions highlighted.",
                        elem_id="folio-page-info",
                    )
                    page_image = gr.Image(
                        label="Cited page",
                        show_label=False,
                        type="pil",
                        interactive=False,
                        height=760,
                        elem_id="folio-page",
                        buttons=["fullscreen", "download"],
                    )
                    with gr.Row():
                        prev_page = gr.Button("◀ Previous page", size="sm", elem_id="folio-prev")
                        next_page = gr.Button("Next page ▶", size="sm", elem_id="folio-next")
                    figures = gr.Gallery(
                        label="Figures and tables the model read",
                        columns=3,
                        height=200,
                        visible=False,
                        elem_id="folio-figures",
                    )
                with gr.Tab("Transparency", id="transparency"):
                    with gr.Accordion("Stage switches for the next question", open=False):
                        context = gr.Radio(
                            CONTEXT_CHOICES,
                            value=str(answer_cfg.context),
                            label="Evidence",
                        )
                        use_sampler = gr.Checkbox(
                            value=answer_cfg.use_sampler,
                            label="WuKong sampler (off: retrieved chunks in rank order)",
                        )
                        use_urag = gr.Checkbox(
                            value=answer_cfg.use_urag,
                            label="URaG (the model's first layers choose the evidence its "
                            "deeper layers read)",
                        )
                        use_refrag = gr.Checkbox(
                            value=answer_cfg.use_refrag,
                            label="REFRAG (evidence chunks read as one vector each, but the most "
                            "question-like; an alternative to URaG)",
                        )
                        mode = gr.Dropdown(
                            MODE_CHOICES,
                            value=str(answer_cfg.retrieval_mode or "default"),
                            label="Retrieval mode",
                        )
                        with gr.Row():
                            k = gr.Slider(
                                1, 100, value=answer_cfg.k, step=1, label="Chunks retrieved (k)"
                            )
                            budget = gr.Slider(
                                0,
                                4000,
                                value=answer_cfg.token_budget,
                                step=50,
                                label="Evidence token budget",
                            )
                    summary = gr.Markdown(
                        "Ask a question to see what each stage kept and what it cost.",
                        elem_id="folio-summary",
                    )
                    tables = gr.HTML("", elem_id="folio-transparency")

        # ------------------------------------------------------------------ handlers

        def refresh_library(me: Folio, selected: list[str] | None):
            documents = me.documents()
            ready = {d.doc_id for d in documents if d.status == "ok"}
            return (
                documents_html(documents),
                gr.CheckboxGroup(
                    choices=document_choices(documents, ready_only=True),
                    value=[d for d in (selected or []) if d in ready],
                ),
                gr.Dropdown(choices=document_choices(documents, ready_only=False), value=None),
            )

        library_outputs = [doc_table, ask_about, to_delete]

        def on_upload(files: list[str] | None, selected: list[str] | None, request: gr.Request):
            me = mine(request)
            paths = [Path(f) for f in files or []]
            if not paths:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                return
            rows = {p: UploadRow(p.name) for p in paths}
            if len(paths) > limits.max_upload_files:
                for row in list(rows.values())[limits.max_upload_files :]:
                    row.state, row.detail = (
                        "rejected",
                        f"more than {limits.max_upload_files} files in one upload",
                    )
            accepted = []
            for path, row in rows.items():
                if row.state == "rejected":
                    continue
                reason = check_upload(
                    path, max_mb=limits.max_upload_mb, max_pages=limits.max_upload_pages
                )
                if reason:
                    row.state, row.detail = "rejected", reason
                else:
                    accepted.append(path)
            skip3 = (gr.skip(), gr.skip(), gr.skip())
            yield progress_html(list(rows.values())), *skip3, gr.skip()
            if accepted:
                engine.wait()
                events: queue.Queue[Progress] = queue.Queue()
                failure: list[str] = []

                def run() -> None:
                    try:
                        me.ingest(accepted, on_progress=events.put)
                    except Exception as exc:  # noqa: BLE001 - shown in the page, logged in full
                        logger.exception("ingestion failed")
                        failure.append(f"{type(exc).__name__}: {exc}".splitlines()[0])

                worker = threading.Thread(target=run, name="folio-ingest", daemon=True)
                worker.start()
                while worker.is_alive() or not events.empty():
                    if drain_progress(rows, events, seconds=0.3):
                        yield progress_html(list(rows.values())), *skip3, gr.skip()
                for row in rows.values():
                    if row.state not in ("added", "unchanged", "failed", "rejected"):
                        row.state, row.detail = "failed", failure[0] if failure else "not finished"
            yield progress_html(list(rows.values())), *refresh_library(me, selected), None

        upload.upload(
            on_upload,
            [upload, ask_about],
            [progress, *library_outputs, upload],
            concurrency_id="folio-library",
            concurrency_limit=1,
            show_progress="hidden",
        )

        def on_delete(doc_id: str | None, selected: list[str] | None, request: gr.Request):
            me = mine(request)
            if not doc_id:
                return "Choose a document to delete.", *refresh_library(me, selected)
            engine.wait()
            try:
                removed = me.delete(doc_id)
            except LookupError as exc:
                return f"⚠️ {exc}", *refresh_library(me, selected)
            return f"Deleted **{_markdown_text(removed.file_name)}**.", *refresh_library(me, selected)

        delete.click(
            on_delete,
            [to_delete, ask_about],
            [delete_note, *library_outputs],
            js="(doc, selected) => (doc && confirm('Delete this document and everything derived from it?')) ? [doc, selected] : [null, selected]",
            concurrency_id="folio-library",
            concurrency_limit=1,
        )

        def on_ask(
            text, history, answers, selected, ctx, sampler, mode_value, k_value, budget_value,
            urag_value, refrag_value, request: gr.Request,
        ):  # fmt: skip
            me = mine(request)
            question = (text or "").strip()
            history = list(history or [])
            if not question:
                yield gr.skip(), gr.skip(), gr.skip(), *_no_panels()
                return
            options = AskOptions(
                ctx or "retrieved",
                bool(sampler),
                mode_value or "default",
                int(k_value),
                int(budget_value),
                bool(urag_value),
                bool(refrag_value),
            )
            before = list(history)
            history += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": _READING},
            ]
            if engine.loading:
                history[-1] = {
                    "role": "assistant",
                    "content": "_Loading the models (first question only)…_",
                }
                yield "", history, gr.skip(), *_no_panels()
                engine.wait()
            else:
                yield "", history, gr.skip(), *_no_panels()
            last = time.monotonic()
            for reply in respond(
                question, before, me, doc_ids=selected or None, options=options
            ):
                history[-1] = {"role": "assistant", "content": reply.text}
                if reply.answer is None:
                    if time.monotonic() - last >= 0.05:
                        last = time.monotonic()
                        yield gr.skip(), history, gr.skip(), *_no_panels()
                    continue
                answer = reply.answer
                turn = len(history_to_turns(before))
                answers = [
                    *list(answers or [])[:turn],
                    *[None] * (turn - len(answers or [])),
                    answer,
                ]
                hits: list[SearchHit] = []
                if answer.ok and options.context == "retrieved":
                    try:
                        hits = me.search(
                            question,
                            k=options.k,
                            mode=options.overrides().get("mode"),
                            doc_ids=selected or None,
                        )
                    except (ValueError, LookupError) as exc:
                        logger.info("retrieved chunks not shown: %s", exc)
                panels = _answer_panels(answer, hits)
                chips = citation_chips(answer)
                shown = _show_chip(me, answer, turn, 0) if chips else (gr.skip(),) * 5
                yield gr.skip(), history, answers, *panels, *shown

        def _no_panels():
            return (gr.skip(),) * 7

        def _answer_panels(answer: Answer, hits: Sequence[SearchHit]):
            return (
                summary_markdown(answer.stats) if answer.ok else error_message(answer.error or ""),
                transparency_html(answer, hits) if answer.ok else "",
            )

        def _show_chip(me: Folio, answer: Answer, turn: int, index: int):
            chips = citation_chips(answer)
            if not 0 <= index < len(chips):
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            chip = chips[index]
            highlights: dict[int, list[BBox]] = {}
            for other in chips:
                if other.doc_id == chip.doc_id:
                    highlights.setdefault(other.page, []).extend(other.boxes)
            state = {
                "doc_id": chip.doc_id,
                "page": chip.page,
                "turn": turn,
                "chip": index,
                "highlights": highlights,
            }
            image, caption = _render(me, state, chip)
            gallery = figure_gallery(me, answer)
            return (
                image,
                caption,
                gr.Gallery(value=gallery, visible=bool(gallery)),
                state,
                gr.Tabs(selected="evidence"),
            )

        def _render(me: Folio, state: dict, chip: Chip | None):
            try:
                rendered = page_view(me, state["doc_id"], state["page"], state["highlights"])
            except (LookupError, ValueError) as exc:
                return None, f"⚠️ {_markdown_text(str(exc))}"
            return rendered.image, page_caption(rendered, chip)

        chip_outputs = [page_image, page_info, figures, view, tabs]
        ask_inputs = [
            message, chatbot, session, ask_about, context, use_sampler, mode, k, budget, use_urag,
            use_refrag,
        ]  # fmt: skip
        ask_outputs = [
            message,
            chatbot,
            session,
            summary,
            tables,
            *chip_outputs,
        ]
        asking = [
            trigger(
                on_ask,
                ask_inputs,
                ask_outputs,
                # NOTE: questions run beside an upload (the library and index are thread-safe);
                # more than a few at once only share the same cores.
                concurrency_id="folio-ask",
                concurrency_limit=limits.concurrent_questions,
                show_progress="hidden",
            )
            for trigger in (message.submit, send.click)
        ]

        stop.click(
            lambda history, answers: mark_stopped(history, len(answers or [])),
            [chatbot, session],
            [chatbot],
            cancels=asking,
            queue=False,
        )

        def on_chip(ref: str, answers: list, request: gr.Request):
            parsed = chip_ref(ref)
            if parsed is None:
                return (gr.skip(),) * 5
            turn, index = parsed
            answer = answers[turn] if answers and 0 <= turn < len(answers) else None
            if answer is None:
                return (
                    None,
                    "That answer is no longer in this conversation.",
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                )
            return _show_chip(mine(request), answer, turn, index)

        cite_ref.change(on_chip, [cite_ref, session], chip_outputs, show_progress="hidden")

        def on_turn_page(state: dict | None, answers: list, step: int, request: gr.Request):
            if not state:
                return gr.skip(), gr.skip(), gr.skip()
            me = mine(request)
            rendered_page = state["page"] + step
            try:
                count = page_view(me, state["doc_id"], state["page"]).page_count
            except (LookupError, ValueError) as exc:
                return None, f"⚠️ {_markdown_text(str(exc))}", state
            if not 1 <= rendered_page <= count:
                return gr.skip(), gr.skip(), state
            state = {**state, "page": rendered_page}
            chip = None
            answer = answers[state["turn"]] if answers and state["turn"] < len(answers) else None
            if answer is not None:
                chips = citation_chips(answer)
                chip = next(
                    (c for c in chips if c.doc_id == state["doc_id"] and c.page == rendered_page),
                    None,
                )
            image, caption = _render(me, state, chip)
            return image, caption, state

        def on_prev_page(state: dict | None, answers: list, request: gr.Request):
            return on_turn_page(state, answers, -1, request)

        def on_next_page(state: dict | None, answers: list, request: gr.Request):
            return on_turn_page(state, answers, +1, request)

        prev_page.click(
            on_prev_page,
            [view, session],
            [page_image, page_info, view],
            show_progress="hidden",
        )
        next_page.click(
            on_next_page,
            [view, session],
            [page_image, page_info, view],
            show_progress="hidden",
        )

        def on_clear():
            return (
                [],
                [],
                None,
                None,
                "Click a citation chip such as **[p. 5]** in an answer to see the cited page here.",
                gr.Gallery(value=[], visible=False),
            )

        clear.click(
            on_clear,
            None,
            [chatbot, session, view, page_image, page_info, figures],
            cancels=asking,
            queue=False,
        )

        def status_update():
            loading = engine.loading
            note = engine.status if loading else ""
            return (
                f'<div class="folio-note">{html.escape(note)}</div>' if note else "",
                gr.Timer(active=loading),
            )

        status_timer.tick(status_update, None, [status_note, status_timer], show_progress="hidden")

        def on_load(selected, request: gr.Request):
            return *refresh_library(mine(request), selected), *status_update()

        demo.load(on_load, [ask_about], [*library_outputs, status_note, status_timer])
    return demo


# ------------------------------------------------------------------------------- launching

THEME = gr.themes.Soft(
    primary_hue="indigo",
    neutral_hue="slate",
    font=["Inter", "ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
)

CSS = """
.folio-header { display: flex; align-items: baseline; gap: 1rem; padding: .25rem 0 .5rem; }
.folio-logo { font-size: 1.6rem; font-weight: 700; letter-spacing: -.02em; }
.folio-tagline { color: var(--body-text-color-subdued); }
.folio-docs { width: 100%; border-collapse: collapse; font-size: .9em; }
.folio-docs th, .folio-docs td { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid var(--border-color-primary); vertical-align: top; }
.folio-docs td:nth-child(2), .folio-docs td:nth-child(3) { text-align: right; }
.folio-doc-title { color: var(--body-text-color-subdued); font-size: .85em; }
.folio-ok { color: #15803d; font-weight: 600; }
.folio-failed, .folio-bad .folio-upload-state { color: #b91c1c; font-weight: 600; }
.folio-empty, .folio-note { color: var(--body-text-color-subdued); font-size: .9em; padding: .3rem 0; }
.folio-upload { margin: .3rem 0 .5rem; }
.folio-upload-name { font-weight: 600; font-size: .9em; overflow-wrap: anywhere; }
.folio-upload progress { width: 100%; height: .6rem; -webkit-appearance: none; appearance: none; border: none; border-radius: 4px; background: var(--neutral-200); }
.folio-upload progress::-webkit-progress-bar { background: var(--neutral-200); border-radius: 4px; }
.folio-upload progress::-webkit-progress-value { background: #15803d; border-radius: 4px; }
.folio-upload progress::-moz-progress-bar { background: #15803d; }
.folio-bad progress::-webkit-progress-value { background: #b91c1c; }
.folio-bad progress::-moz-progress-bar { background: #b91c1c; }
.folio-failed-reason { color: #b91c1c; font-size: .85em; overflow-wrap: anywhere; }
.folio-docs td:first-child { overflow-wrap: anywhere; }
.folio-upload-state { font-size: .85em; color: var(--body-text-color-subdued); }
.folio-hint p { color: var(--body-text-color-subdued); font-size: .85em; margin: 0; }
.folio-table-title { font-weight: 600; margin: .8rem 0 .3rem; }
.folio-scroll { max-height: 320px; overflow: auto; border: 1px solid var(--border-color-primary); border-radius: 6px; }
.folio-table { width: 100%; border-collapse: collapse; font-size: .85em; }
.folio-table th { position: sticky; top: 0; background: var(--background-fill-secondary); text-align: left; }
.folio-table th, .folio-table td { padding: .25rem .45rem; border-bottom: 1px solid var(--border-color-primary); vertical-align: top; }
.folio-table td:last-child { min-width: 16rem; }
.folio-chat a[href*="#folio-cite-"] {
  display: inline-block; padding: .05rem .55rem; margin: .15rem .2rem 0 0; border-radius: 999px;
  border: 1px solid var(--color-accent); background: var(--color-accent-soft);
  color: var(--color-accent) !important; font-size: .85em; font-weight: 600;
  text-decoration: none !important; cursor: pointer;
}
.folio-chat a[href*="#folio-cite-"]:hover { background: var(--color-accent); color: white !important; }
#folio-page img { object-fit: contain; }
"""

# NOTE: Gradio renders chat Markdown itself; a click on a chip link is caught here and handed to
# the hidden textbox whose change event opens the page (a nonce makes a repeated click count).
HEAD = """
<script>
document.addEventListener("click", function (event) {
  var link = event.target && event.target.closest ? event.target.closest('a[href*="#folio-cite-"]') : null;
  if (!link) return;
  event.preventDefault();
  event.stopPropagation();
  var ref = link.getAttribute("href").split("#folio-cite-")[1];
  var box = document.querySelector("#folio-cite-ref textarea, #folio-cite-ref input");
  if (!box) return;
  box.value = ref + "|" + Date.now();
  box.dispatchEvent(new Event("input", { bubbles: true }));
}, true);
</script>
"""


def serve(
    folio: Folio,
    *,
    host: str,
    port: int,
    auth: tuple[str, str] | None = None,
    accounts: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Launch the app and block until it is stopped (Ctrl-C).

    Args:
        folio: The library to serve.
        host: Address to listen on.
        port: Port to listen on.
        auth: (user, password) of the single login that sees the local user's documents.
        accounts: Sign in with the library's accounts (`folio user add`), each seeing only its
            own documents (and `auth`, if given, as the local user).
        on_ready: Told the app's address once it is listening.

    Raises:
        ValueError: `auth`'s user name is also an account's.
    """
    limits = folio.settings.serve
    if accounts and auth is not None and auth[0] in {u.name for u in list_users(folio.library)}:
        raise ValueError(
            f"--auth user {auth[0]!r} is also an account: give the local login another name"
        )
    engine = Engine(folio)
    demo = build_ui(folio, engine, accounts=accounts, local_login=auth[0] if auth else None)
    demo.queue(default_concurrency_limit=4)
    if limits.preload:
        engine.preload()
    demo.launch(
        server_name=host,
        server_port=port,
        auth=_login_check(folio, auth) if accounts else auth,
        auth_message=(
            "Folio: sign in with your account."
            if accounts
            else "Folio: sign in with the user and password given to `folio serve`."
        ),
        max_file_size=f"{limits.max_upload_mb:g}mb",
        theme=THEME,
        css=CSS,
        head=HEAD,
        ssr_mode=False,
        show_error=False,
        quiet=True,
        footer_links=["api", "settings"],
        prevent_thread_lock=True,
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if on_ready is not None:
        on_ready(url)
    try:
        demo.block_thread()
    finally:
        demo.close()


def _login_check(folio: Folio, local: tuple[str, str] | None) -> Callable[[str, str], bool]:
    """Gradio's login check: the library's accounts, and the single local login if given."""

    def check(name: str, password: str) -> bool:
        if local is not None and name == local[0]:
            return hmac.compare_digest(password.encode(), local[1].encode())
        return check_login(folio.library, name, password)

    return check
