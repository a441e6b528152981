"""What the side panels show: the library's documents, the cited page, the figures the model
read, and the transparency tables (what each stage kept, the evidence, the retrieved chunks).

Plain functions from answers and documents to Markdown, HTML and images; the page wires them to
components (app/web/layout.py), tests call them without a browser.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.api import Folio
from app.web.chat import BBox, Chip, markdown_text
from pipeline.answering.answer import Answer, AnswerStats, RetrievedChunk
from pipeline.library.documents import DocumentInfo
from pipeline.library.viewer import PageImage, figure_assets, render_page

_PAGE_DPI = 130
_SNIPPET = 220

STAGE_NAMES = {
    "retrieve": "Retrieve (chunks)",
    "candidates": "Candidates (blocks)",
    "sample": "Sample (WuKong)",
    "budget": "Budget (rank order)",
    "first-pages": "First pages",
    "screen": "Screen (instructions)",
    "urag": "URaG (deep layers)",
    "refrag": "REFRAG (chunks as vectors)",
    "prompt": "Prompt (evidence / all tokens)",
    "generate": "Generate (tokens / most allowed)",
    "answerability": "Answerability (answerable / checked)",
    "compute": "Compute (evaluated / tried)",
}
# One line per stage for the legend under the stage table: what the stage does.
STAGE_NOTES = {
    "retrieve": "the library index's best k chunks for the question, of all the chunks searched.",
    "candidates": "the blocks of those chunks, the blocks next to them and the figures and "
    "tables of their pages: what the sampler chooses from.",
    "sample": "the WuKong sampler keeps the paragraphs and figures closest to the question, "
    "up to the evidence token budget, in reading order.",
    "budget": "sampler off: the retrieved chunks in rank order, up to the evidence token budget.",
    "first-pages": "no retrieval: the document from page 1, cut to the evidence token budget.",
    "screen": "sentences of the evidence that give the model instructions are left out.",
    "urag": "the model's first layers score the evidence; its deeper layers read only the "
    "items kept (the evidence table's Deep layers column).",
    "refrag": "evidence chunks enter the model as one vector each, but the most question-like, "
    "which it reads word by word.",
    "compute": "an arithmetic question: the model wrote one expression over numbers in the "
    "evidence, evaluated safely (kept 1 of 1 when its value is the answer; else the normal "
    "answer follows); tokens: the expression's of the most allowed.",
    "prompt": "what the model read: evidence tokens of all the prompt's tokens.",
    "generate": "the answer: tokens written of the most allowed.",
    "answerability": "the model is asked whether the evidence states its answer (yes/no, from "
    "its next-token probabilities); with the retrieval scores a calibrated score decides: kept "
    "1 of 1 when answerable; tokens: the follow-up turn the model ran of the whole sequence "
    "(the answer's KV cache served the rest).",
}

STAGE_HEADERS = ["Stage", "Kept", "of", "Tokens kept", "of", "ms"]
EVIDENCE_HEADERS = ["[n]", "Document", "Page", "Kind", "Score", "Tokens", "Deep layers", "Text"]
RETRIEVED_HEADERS = ["#", "Document", "Page", "Score", "Text"]


# ------------------------------------------------------------------------------ the library


def documents_html(documents: Sequence[DocumentInfo]) -> str:
    """The library's documents: file, title, pages and passages, status (errors spelled out).

    Long file names are cut with an ellipsis (the full name in the tooltip); titles and errors
    wrap between words.
    """
    if not documents:
        return '<div class="folio-empty">The library is empty: add PDFs above.</div>'
    rows = []
    for d in documents:
        name = html.escape(d.file_name)
        title = (
            f'<div class="folio-doc-title" title="{html.escape(d.title)}">{html.escape(d.title)}'
            "</div>"
            if d.title
            else ""
        )
        if d.status == "ok":
            status = '<span class="folio-ok">ready</span>'
            size = f'<div class="folio-doc-size">{d.pages} pages · {d.chunks} passages</div>'
        else:
            status = '<span class="folio-failed">failed</span>'
            reason = (d.error or "unknown error").removeprefix(f"{d.file_name}: ")
            title += f'<div class="folio-failed-reason">{html.escape(reason)}</div>'
            size = ""
        rows.append(
            f'<tr><td><div class="folio-file-name" title="{name}">{name}</div>{title}{size}</td>'
            f"<td>{status}</td></tr>"
        )
    return (
        '<table class="folio-docs"><colgroup><col><col class="folio-state"></colgroup>'
        f"<thead><tr><th>Document</th><th>Status</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table>"
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


# ------------------------------------------------------------------------ the evidence tab


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
    where = f"**{markdown_text(view.file_name)}**, page {view.page} of {view.page_count}"
    if view.source == "thumbnail":
        where += " (low-resolution preview: the library keeps no copy of this PDF)"
    if chip is not None and chip.page == view.page and chip.doc_id == view.doc_id:
        quotes = " ".join(
            f"“{markdown_text(' '.join(q.split()))}”" for q in chip.quotes if q.strip()
        )
        return (
            f"{where}. Highlighted: {len(chip.boxes)} cited region(s).\n\n> {quotes}"
            if quotes
            else where
        )
    return where


def deleted_caption(file_name: str, page: int | None = None) -> str:
    """The line shown instead of a page whose document was deleted."""
    where = f", page {page}" if page else ""
    return (
        f"⚠️ **{markdown_text(file_name or 'This document')}** (deleted){where}: the document is "
        "no longer in your library, so its pages cannot be shown."
    )


def figure_gallery(folio: Folio, answer: Answer) -> list[tuple[str, str]]:
    """(image path, caption) of the figures and tables among the evidence the model read (those
    of deleted documents are gone)."""
    items = [e for e in answer.evidence if e.kind in ("figure", "table")]
    assets = figure_assets(folio.library, [b for e in items for b in e.block_ids])
    gallery = []
    for e in items:
        path = next((assets[b] for b in e.block_ids if b in assets), None)
        if path is not None:
            text = " ".join(e.text.split())
            gallery.append((str(path), f"[{e.number}] {e.file_name} p. {e.page}: {text[:120]}"))
    return gallery


# -------------------------------------------------------------------- the transparency tab


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
    if stats.answer_type:
        lines.append(f"**Answer type** {stats.answer_type} (asked for after the question)")
    if stats.computed:
        lines.append(f"**Computed** {stats.computed} = `{stats.expression}` (evaluated safely)")
    elif stats.compute_note:
        tried = f" `{stats.expression}`" if stats.expression else ""
        lines.append(f"**Compute** tried{tried}, not used: {stats.compute_note}")
    check = stats.answerability
    if check is not None:
        verdict = "answerable" if check.answerable else "declined: Not answerable"
        line = (
            f"**Answerability** {check.score:.2f} (threshold {check.threshold:.2f}; the model's "
            f"yes {check.verify_yes:.2f}) → {verdict}"
        )
        if not check.answerable and check.draft:
            line += f" · the model's draft: “{check.draft[:200]}”"
        lines.append(line)
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


def stage_legend(stats: AnswerStats | None) -> str:
    """One line per stage that ran, saying what it does."""
    if stats is None or not stats.stages:
        return ""
    lines = "".join(
        f"<li><b>{html.escape(STAGE_NAMES.get(s.name, s.name))}</b>: "
        f"{html.escape(STAGE_NOTES[s.name])}</li>"
        for s in stats.stages
        if s.name in STAGE_NOTES
    )
    return f'<ul class="folio-legend">{lines}</ul>' if lines else ""


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


def retrieved_rows(chunks: Sequence[RetrievedChunk]) -> list[list[Any]]:
    """The chunks the answer's retrieval returned, in rank order."""
    return [
        [rank, c.file_name, c.page, round(c.score, 3), _snippet(c.text)]
        for rank, c in enumerate(chunks, 1)
    ]


def table_html(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    empty: str,
    *,
    names: Collection[int] = (),
) -> str:
    """A titled HTML table shown in full (cells escaped, long text wrapped); `empty` when there
    are no rows. The columns `names` hold file names, cut with an ellipsis (full name in the
    tooltip) so that one long name does not widen the table past its panel."""

    def cell(column: int, value: Any) -> str:
        text = html.escape(str(value))
        if column in names:
            return f'<td><div class="folio-file-name" title="{text}">{text}</div></td>'
        return f"<td>{text}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(cell(i, value) for i, value in enumerate(row)) + "</tr>" for row in rows
    )
    table = (
        f'<div class="folio-table-box"><table class="folio-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
        if rows
        else f'<div class="folio-empty">{html.escape(empty)}</div>'
    )
    return f'<div class="folio-table-title">{html.escape(title)}</div>{table}'


def transparency_html(answer: Answer | None) -> str:
    """The stage table with a line on each stage, then the evidence and retrieved-chunk tables
    of an answer (the chunks its own retrieval returned)."""
    if answer is None:
        return ""
    retrieval_off = answer.stats is not None and answer.stats.context != "retrieved"
    urag_on = answer.stats is not None and answer.stats.stage("urag") is not None
    headers, rows = EVIDENCE_HEADERS, evidence_rows(answer)
    if not urag_on:  # every item reached every layer: the Deep layers column would say "all"
        deep = EVIDENCE_HEADERS.index("Deep layers")
        headers = [h for i, h in enumerate(headers) if i != deep]
        rows = [[v for i, v in enumerate(row) if i != deep] for row in rows]
    return "".join(
        [
            table_html("Stages", STAGE_HEADERS, stage_rows(answer.stats), "No stage ran."),
            stage_legend(answer.stats),
            table_html(
                "Evidence the model read (sampled blocks)",
                headers,
                rows,
                "No evidence: the model answered from the question alone.",
                names={1},
            ),
            '<div class="folio-note">Deep layers: whether the model\'s deeper layers read the '
            "item (URaG kept it) or not.</div>"
            if urag_on and answer.evidence
            else "",
            table_html(
                "Retrieved chunks",
                RETRIEVED_HEADERS,
                retrieved_rows(answer.retrieved),
                "Retrieval was off for this question." if retrieval_off else "No chunks retrieved.",
                names={1},
            ),
        ]
    )


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SNIPPET else flat[: _SNIPPET - 1] + "…"
