"""The chat: Gradio's message history as our own turns, answers as Markdown with citation chips,
and `respond`, which streams one question's answer as chat updates.

Gradio is an edge: its message format is converted here (`history_to_turns`) and nothing from
`gradio` reaches `pipeline/`. Each question is answered on its own (the answering model sees no
earlier turns).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.api import Folio
from pipeline.answering.answer import Answer

logger = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]
CHIP_ANCHOR = "folio-cite-"
WAITING = "Searching the library and reading the evidence…"
_MARKER = re.compile(r"\s*\[\d+(?:\s*[,;]\s*\d+)*\]")


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
        answerability: Check that the evidence states the answer; decline when it does not.
        typed: Ask for the answer type the question expects and cut the answer to it.
        compute: Answer arithmetic questions with a safely evaluated expression.
    """

    context: str = "retrieved"
    sampler: bool = True
    mode: str = "default"
    k: int = 20
    budget: int = 1000
    urag: bool = False
    refrag: bool = False
    answerability: bool = False
    typed: bool = True
    compute: bool = False

    def overrides(self) -> dict[str, Any]:
        """The `Folio.ask` overrides these switches stand for."""
        out: dict[str, Any] = {
            "context": self.context,
            "sampler": bool(self.sampler),
            "k": int(self.k),
            "budget": int(self.budget),
            "use_urag": bool(self.urag),
            "use_refrag": bool(self.refrag),
            "answerability": bool(self.answerability),
            "typed": bool(self.typed),
            "compute": bool(self.compute),
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
        text = content_text(message.get("content")) if role else ""
        if role == "user":
            if question is not None:
                turns.append(Turn(question, "\n".join(answer)))
            question, answer = text, []
        elif role == "assistant" and question is not None:
            answer.append(text)
    if question is not None:
        turns.append(Turn(question, "\n".join(answer)))
    return turns


def content_text(content: Any) -> str:
    """The text of a chat message's content (a string, a typed block or a list of them)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, Sequence):
        return "".join(content_text(part) for part in content)
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
    text = markdown_text(answer.plain) or "(the model returned an empty answer)"
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


def markdown_text(text: str) -> str:
    """Model text shown as text: Markdown and HTML in it are escaped, not rendered."""
    escaped = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", escaped)


def error_message(reason: str) -> str:
    """One clear message for a question that failed (never a traceback)."""
    first = (reason or "unknown error").strip().splitlines()[0]
    return f"⚠️ **Could not answer.** {markdown_text(first)}"


def status_message(line: str, seconds: float) -> str:
    """The assistant's message while a question runs: the stage now running and the time so
    far, e.g. "_Sampling evidence (WuKong)… (4 s)_"."""
    return f"_{markdown_text(line.strip() or WAITING)} ({seconds:.0f} s)_"


def is_status(text: str) -> bool:
    """Whether an assistant message is still a status line (no answer text yet)."""
    return text == "" or bool(re.fullmatch(r"_.*\(\d+ s\)_", text, flags=re.DOTALL))


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
    text = content_text(out[-1].get("content"))
    waiting = is_status(text) or text == f"_{WAITING}_"
    stopped = "_Stopped before the answer began._" if waiting else f"{text} _(stopped)_"
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
    on_progress: Callable[[str], None] | None = None,
) -> Iterator[Reply]:
    """Answer a chat message, streaming: partial text as it is generated, then the final reply.

    Args:
        message: The user's question.
        history: The Gradio chat history before this message (its turn count numbers the
            answer's chips).
        folio: The library to answer from.
        doc_ids: Only these documents; None or empty: the whole library.
        options: Stage switches (default: the configured stages).
        on_progress: Told a status line as each answering stage starts.

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
    if on_progress is not None:
        overrides["on_progress"] = on_progress
    partial = ""
    try:
        for part in folio.ask_stream(
            question, doc_ids=list(doc_ids) if doc_ids else None, **overrides
        ):
            if isinstance(part, str):
                partial += part
                yield Reply(markdown_text(_MARKER.sub("", partial)) or "…")
            else:
                yield Reply(format_answer(part, turn), part)
                return
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        # A check across several settings has no single field to name.
        reason = f"invalid setting {where}: {message}" if where else message
    except (ValueError, LookupError, TypeError, FileNotFoundError, ConnectionError) as exc:
        # ConnectionError: a remote generator unreachable or broken off (one line, URL included)
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - the page shows one line; the log keeps the rest
        logger.exception("question failed: %s", question)
        detail = (str(exc).strip().splitlines() or [""])[0]
        reason = (
            f"internal error ({type(exc).__name__}: {detail}); the details are in the server log"
        )
    yield Reply(error_message(reason), Answer.failed(question, reason, doc_ids=doc_ids or ()))
