"""Uploads: the checks an uploaded file must pass, and its progress while it is parsed and
indexed (one row and bar per file)."""

from __future__ import annotations

import html
import queue
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.ingestion.ingest import IngestResult, Progress, count_pages

FINISHED = ("added", "unchanged", "failed", "rejected")


@dataclass
class UploadRow:
    """One uploaded file's state while it is checked, parsed and indexed.

    `doc_id` is the library's id for it once ingestion has recorded it (added, unchanged or
    failed), so that deleting the document also removes its row.
    """

    name: str
    state: str = "queued"  # queued, parsing, indexing, added, unchanged, failed, rejected
    pages_done: int = 0
    page_count: int = 0
    ocr_pages: int = 0
    detail: str = ""
    doc_id: str | None = None

    @property
    def fraction(self) -> float:
        if self.state in FINISHED:
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
    row.doc_id = result.doc_id
    if result.status == "added":
        row.detail = f"{result.pages} pages, {result.chunks} passages"
    elif result.status == "failed":
        row.detail = (result.error or "unknown error").removeprefix(f"{row.name}: ")


def without_documents(rows: Sequence[UploadRow], doc_ids: Collection[str]) -> list[UploadRow]:
    """The upload rows left once the documents `doc_ids` are deleted."""
    return [row for row in rows if row.doc_id is None or row.doc_id not in doc_ids]


def without_failures(rows: Sequence[UploadRow]) -> list[UploadRow]:
    """The upload rows left once every failed or refused upload is removed."""
    return [row for row in rows if row.state not in ("failed", "rejected")]


def progress_html(rows: Sequence[UploadRow], status: str = "") -> str:
    """The per-document progress bars of an upload."""
    if not rows:
        return ""
    lines = []
    for row in rows:
        bad = row.state in ("failed", "rejected")
        name = html.escape(row.name)
        lines.append(
            f'<div class="folio-upload{" folio-bad" if bad else ""}">'
            f'<div class="folio-upload-name folio-file-name" title="{name}">{name}</div>'
            f'<progress max="100" value="{round(row.fraction * 100)}"></progress>'
            f'<div class="folio-upload-state">{html.escape(row.label)}</div></div>'
        )
    note = f'<div class="folio-note">{html.escape(status)}</div>' if status else ""
    return f'<div class="folio-uploads">{"".join(lines)}{note}</div>'
