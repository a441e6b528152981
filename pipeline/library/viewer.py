"""Pages as images for the evidence viewer: a stored page rendered with regions highlighted.

The library keeps a copy of each ingested PDF (`<library>/assets/<doc_id>/source.pdf`, see
`IngestConfig.keep_source`); the page is rendered from it with PyMuPDF. Block boxes are stored in
PDF points of the *displayed* page (rotation applied), which is also the space PyMuPDF renders,
so a box maps to pixels by one scale factor. Without the copy (keep_source off, or an encrypted
PDF) the page's stored thumbnail is used instead, at its lower resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw
from sqlalchemy import select

from storage import Block, Document, Library, Page

logger = logging.getLogger(__name__)

__all__ = ["PageImage", "draw_highlights", "figure_assets", "render_page", "source_pdf"]

BBox = tuple[float, float, float, float]

_FILL = (255, 196, 0, 70)
_OUTLINE = (230, 81, 0, 255)
_PAD_POINTS = 2.0
_MAX_DPI = 300


@dataclass(frozen=True)
class PageImage:
    """A rendered page.

    Attributes:
        image: The page as an RGB image, highlights drawn.
        doc_id: Document id.
        file_name: The PDF's file name.
        page: 1-based page number.
        page_count: Pages in the document.
        scale: Pixels per PDF point.
        source: "pdf" (rendered from the stored PDF) or "thumbnail" (the stored thumbnail).
    """

    image: Image.Image
    doc_id: str
    file_name: str
    page: int
    page_count: int
    scale: float
    source: str


def source_pdf(library: Library, doc_id: str) -> Path | None:
    """The library's copy of a document's PDF, or None when it keeps none."""
    path = library.source_pdf(doc_id)
    return path if path.is_file() else None


def render_page(
    library: Library,
    doc_id: str,
    page: int,
    boxes: Sequence[BBox] = (),
    *,
    dpi: int = 110,
) -> PageImage:
    """Render one page of a stored document with `boxes` highlighted.

    Args:
        library: The open library.
        doc_id: Full document id.
        page: 1-based page number.
        boxes: Regions to highlight, (x0, y0, x1, y1) in PDF points of the displayed page.
        dpi: Resolution (capped at 300).

    Returns:
        The `PageImage`.

    Raises:
        LookupError: No such document, or `page` is outside it.
        ValueError: Neither the PDF nor a thumbnail of the page is stored.
    """
    with library.sessions() as session:
        document = session.get(Document, doc_id)
        if document is None:
            raise LookupError(f"no document with id {doc_id!r}")
        if not 1 <= page <= document.page_count:
            raise LookupError(
                f"{document.file_name} has {document.page_count} pages; there is no page {page}"
            )
        row = session.scalar(select(Page).where(Page.doc_id == doc_id, Page.number == page))
        file_name, page_count = document.file_name, document.page_count
    dpi = max(36, min(dpi, _MAX_DPI))
    image = scale = None
    source = source_pdf(library, doc_id)
    if source is not None:
        image = _render_pdf_page(source, page, dpi)
        scale = dpi / 72
    kind = "pdf"
    if image is None:
        thumbnail = library.asset_path(row.thumbnail) if row is not None and row.thumbnail else None
        if thumbnail is None or not thumbnail.is_file() or not row.width:
            raise ValueError(
                f"{file_name}: the library keeps no copy of this PDF and no image of page {page} "
                "(ingest it again with ingest.keep_source on)"
            )
        image = Image.open(thumbnail).convert("RGB")
        scale = image.width / row.width
        kind = "thumbnail"
    return PageImage(
        image=draw_highlights(image, boxes, scale),
        doc_id=doc_id,
        file_name=file_name,
        page=page,
        page_count=page_count,
        scale=scale,
        source=kind,
    )


def _render_pdf_page(path: Path, page: int, dpi: int) -> Image.Image | None:
    """The displayed page (rotation applied) as an RGB image, or None if it cannot be opened."""
    try:
        with pymupdf.open(path) as doc:
            if doc.needs_pass:
                return None  # NOTE: the password is not kept; the thumbnail stands in.
            pixmap = doc.load_page(page - 1).get_pixmap(dpi=dpi, alpha=False)
            return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
    except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
        logger.warning("%s: cannot render page %d (%s)", path, page, exc)
        return None


def draw_highlights(image: Image.Image, boxes: Sequence[BBox], scale: float) -> Image.Image:
    """A copy of `image` with each box (in PDF points, `scale` pixels per point) filled and outlined.

    Args:
        image: The rendered page.
        boxes: (x0, y0, x1, y1) in PDF points of the displayed page.
        scale: Pixels per PDF point of `image`.
    """
    base = image.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width = max(2, round(scale * 1.5))
    for x0, y0, x1, y1 in boxes:
        if abs(x1 - x0) <= 0 or abs(y1 - y0) <= 0:
            continue  # an empty box marks nothing
        rect = [
            max(0, (min(x0, x1) - _PAD_POINTS) * scale),
            max(0, (min(y0, y1) - _PAD_POINTS) * scale),
            min(base.width - 1, (max(x0, x1) + _PAD_POINTS) * scale),
            min(base.height - 1, (max(y0, y1) + _PAD_POINTS) * scale),
        ]
        if rect[2] <= rect[0] or rect[3] <= rect[1]:
            continue  # outside the image
        draw.rectangle(rect, fill=_FILL, outline=_OUTLINE, width=width)
    return Image.alpha_composite(base, overlay).convert("RGB")


def figure_assets(library: Library, block_ids: Sequence[int]) -> dict[int, Path]:
    """The stored images (figure and table crops) of blocks, by block id; blocks without one
    are left out."""
    if not block_ids:
        return {}
    with library.sessions() as session:
        rows = session.execute(
            select(Block.id, Block.asset).where(
                Block.id.in_(list(block_ids)), Block.asset.is_not(None)
            )
        ).all()
    found = {block_id: library.asset_path(asset) for block_id, asset in rows}
    return {block_id: path for block_id, path in found.items() if path.is_file()}
