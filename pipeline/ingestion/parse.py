"""PDF → pages and blocks with PyMuPDF: reading order, headings, captions, figures, tables, OCR.

Every bbox is in PDF points in the *displayed* page space (rotation applied), so it can be drawn
directly on a rendering of the page. Pages are 1-based.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pymupdf
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.config import FigureOcr, OcrMode, ParseConfig, ParserKind, TableMode
from pipeline.ingestion import figures
from pipeline.ingestion.figures import FigureOcrError, OcrBudget
from pipeline.ingestion.tables import Word, group_rows, table_markdown

logger = logging.getLogger(__name__)

# 2: tables as Markdown grids (ParseConfig.tables); 3: text inside raster figures (figure_ocr),
# figure and table regions of slide pages (layout_detector)
PARSER_VERSION = "folio-parse-3"


def parser_version(config: ParseConfig) -> str:
    """The version a document is stored with: the parser's, then each setting that changes what
    it stores when that setting is not its default, so that an ingest with another setting parses
    stored documents again ("folio-parse-3+fast", "folio-parse-3+fast+tab:spans+fig:off")."""
    defaults = ParseConfig()
    parts = [PARSER_VERSION, str(config.parser)]
    if config.tables != defaults.tables:
        parts.append(f"tab:{config.tables}")
    if config.table_finder != defaults.table_finder:
        parts.append("finder" if config.table_finder else "nofinder")
    if config.figure_ocr != defaults.figure_ocr:
        parts.append(f"fig:{config.figure_ocr}")
    if config.layout_detector != defaults.layout_detector:
        parts.append("regions" if config.layout_detector else "noregions")
    return "+".join(parts)  # at most 61 characters (Document.parser_version holds 64)

BBox = tuple[float, float, float, float]

# "Figure 2: ..." / "Table 1. ..." / "Fig. 3 |" but not "Table 1 lists ..." (a reference in prose).
_CAPTION = re.compile(r"^\s*(fig\.?|figure|table|tab\.)\s*(\d+|[ivxlc]+)[a-z]?\s*([:.|—–-]|$)", re.IGNORECASE)
# IEEE style: "TABLE II" over a small-caps title, no punctuation after the numeral.
_ROMAN_TABLE = re.compile(r"^\s*TABLE\s+[IVXLC]+\b")
_BULLET = re.compile(r"^\s*([•◦▪▫●○■□\-–—*]|\(?\d{1,2}[.)]|\(?[a-z][.)])\s+")
# Text extraction flags: no image payloads (figures are located with get_image_info instead).
_TEXT_FLAGS = (
    pymupdf.TEXT_PRESERVE_LIGATURES
    | pymupdf.TEXT_PRESERVE_WHITESPACE
    | pymupdf.TEXT_MEDIABOX_CLIP
    | pymupdf.TEXT_DEHYPHENATE
)


class ParseError(Exception):
    """A PDF could not be parsed; the message is one line naming the reason and the fix."""


@dataclass(frozen=True)
class ParsedBlock:
    kind: str  # storage.BlockKind values
    bbox: BBox
    text: str
    reading_order: int
    asset: str | None = None  # path relative to the library, for figures and tables
    caption_of: int | None = None  # reading_order of the figure/table a caption describes


@dataclass(frozen=True)
class ParsedPage:
    number: int
    width: float
    height: float
    rotation: int
    text: str
    has_text_layer: bool
    ocr_used: bool
    thumbnail: str | None
    blocks: tuple[ParsedBlock, ...]


@dataclass(frozen=True)
class ParsedDocument:
    doc_id: str
    file_name: str
    title: str | None
    page_count: int
    parser_version: str
    pages: tuple[ParsedPage, ...] = field(default=())


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes: the document id."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


# MuPDF's errors: pymupdf raises RuntimeError or ValueError from most calls, but its own
# FzError* classes (not RuntimeErrors) from some, e.g. get_pixmap on an oversized image.
MUPDF_ERRORS = (RuntimeError, ValueError, pymupdf.mupdf.FzErrorBase)


def raise_if_out_of_memory(exc: BaseException) -> None:
    """Turn MuPDF's failed allocation into MemoryError: out of memory is a limit, not damage."""
    if isinstance(exc, pymupdf.mupdf.FzErrorSystem) and "malloc" in str(exc):
        raise MemoryError(str(exc)) from exc


def _detail(exc: BaseException, path: Path) -> str:
    """An exception's message as a short line, without the file's full path (the name leads)."""
    text = " ".join(str(exc).replace(str(path), path.name).split())
    return text if len(text) <= 200 else text[:197] + "..."


def open_pdf(path: Path, password: str | None = None) -> pymupdf.Document:
    """Open a PDF or raise ParseError with a one-line reason and fix."""
    name = path.name
    if not path.is_file():
        raise ParseError(f"{name}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise ParseError(f"{name}: empty file (0 bytes)")
    with path.open("rb") as handle:
        head = handle.read(1024)
    if b"%PDF" not in head:
        raise ParseError(f"{name}: not a PDF (no %PDF header)")
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except MUPDF_ERRORS as exc:
        raise_if_out_of_memory(exc)
        raise ParseError(f"{name}: malformed PDF that MuPDF cannot repair ({_detail(exc, path)})") from exc
    try:
        if doc.needs_pass:
            if password is None:
                raise ParseError(f"{name}: encrypted; pass its password with --password")
            if not doc.authenticate(password):
                raise ParseError(f"{name}: encrypted and the password given is wrong")
        # NOTE: the page tree is read here; a damaged one (a /Count of -1) raises, not returns 0.
        if doc.page_count == 0:
            raise ParseError(f"{name}: no pages (the page tree is empty or unreadable)")
    except MUPDF_ERRORS as exc:
        doc.close()
        raise_if_out_of_memory(exc)
        raise ParseError(f"{name}: damaged page tree that MuPDF cannot read ({_detail(exc, path)})") from exc
    except ParseError:
        doc.close()
        raise
    return doc


_TESSERACT_WARNED = False


def tesseract_available() -> bool:
    """Whether Tesseract and its language data can be found (warns once when not)."""
    global _TESSERACT_WARNED
    found = shutil.which("tesseract") is not None
    if found:
        try:
            found = bool(pymupdf.get_tessdata())
        except (RuntimeError, ValueError):
            found = False
    if not found and not _TESSERACT_WARNED:
        _TESSERACT_WARNED = True
        logger.warning("Tesseract not found: scanned pages get no text (apt-get install tesseract-ocr)")
    return found


def parse_pdf(
    path: Path,
    config: ParseConfig,
    *,
    asset_dir: Path | None = None,
    asset_prefix: str = "",
    password: str | None = None,
    doc_id: str | None = None,
    on_page: Callable[[int, int, int], None] | None = None,
) -> ParsedDocument:
    """Parse a PDF into pages and blocks.

    Args:
        path: the PDF.
        config: parse settings.
        asset_dir: where page thumbnails and figure crops are written (none when None).
        asset_prefix: the library-relative path of `asset_dir`, stored in the assets' names.
        password: password of an encrypted PDF.
        doc_id: the document id (SHA-256 of the bytes), computed when None.
        on_page: called with (pages done, page count, pages OCR'd so far) after each page.

    Raises:
        ParseError: with a one-line reason when the file cannot be parsed.
    """
    doc_id = doc_id or sha256_file(path)
    doc = open_pdf(path, password)
    try:
        if doc.page_count > config.max_pages:
            raise ParseError(
                f"{path.name}: {doc.page_count} pages, over the limit of {config.max_pages} "
                "(raise FOLIO_PARSE__MAX_PAGES)"
            )
        if asset_dir is not None:
            asset_dir.mkdir(parents=True, exist_ok=True)
        layout_boxes = _layout_boxes(path, doc) if config.parser == ParserKind.LAYOUT else None
        pages = []
        ocr_pages = 0
        budget = OcrBudget(config.figure_ocr_budget_s)
        for index in range(doc.page_count):
            try:
                page = doc.load_page(index)
                boxes = layout_boxes[index] if layout_boxes is not None else None
                pages.append(parse_page(page, config, asset_dir, asset_prefix, boxes, budget))
                ocr_pages += pages[-1].ocr_used
            except MUPDF_ERRORS as exc:
                raise_if_out_of_memory(exc)
                # NOTE: one damaged page must not lose the whole document; keep an empty page.
                logger.warning("%s: page %d unreadable (%s); kept empty", path.name, index + 1, _detail(exc, path))
                pages.append(_empty_page(index + 1))
            if on_page is not None:
                on_page(index + 1, doc.page_count, ocr_pages)
        if budget.figures or budget.photos:
            logger.debug(
                "%s: figure OCR %.1f s on %d figures, %d photos skipped",
                path.name,
                budget.spent,
                budget.figures,
                budget.photos,
            )
        title = (doc.metadata or {}).get("title") or _guess_title(pages)
        return ParsedDocument(
            doc_id=doc_id,
            file_name=path.name,
            title=title.strip()[:1000] if title else None,
            page_count=doc.page_count,
            parser_version=parser_version(config),
            pages=tuple(pages),
        )
    finally:
        doc.close()


def _empty_page(number: int) -> ParsedPage:
    return ParsedPage(number, 0.0, 0.0, 0, "", False, False, None, ())


def _guess_title(pages: list[ParsedPage]) -> str | None:
    for page in pages[:2]:
        for block in page.blocks:
            if block.kind == "heading" and len(block.text) > 3:
                return block.text
    return None


# --------------------------------------------------------------------------------------- page


@dataclass
class _Text:
    """A text block while the page is being assembled."""

    bbox: BBox
    text: str
    size: float
    bold: bool
    lines: int
    kind: str = "text"
    spans: tuple[tuple[BBox, str], ...] = ()  # (bbox, text) of each span, for table rows


def parse_page(
    page: pymupdf.Page,
    config: ParseConfig,
    asset_dir: Path | None,
    asset_prefix: str,
    layout_boxes: list[dict] | None,
    budget: OcrBudget | None = None,
) -> ParsedPage:
    """One page's blocks (what `parse_pdf` does per page): OCR where the page needs it, figures
    rendered into `asset_dir` (None: not rendered), `layout_boxes` from the layout model (None:
    the fast parser), figure OCR charged to the document's `budget` (None: this page's own)."""
    budget = budget if budget is not None else OcrBudget(config.figure_ocr_budget_s)
    number = page.number + 1
    textpage = page.get_textpage(flags=_TEXT_FLAGS)  # extracted once, read twice
    has_text_layer = len(textpage.extractText().strip()) >= config.min_text_chars
    ocr_used = False
    want_ocr = config.ocr == OcrMode.ALWAYS or (config.ocr == OcrMode.AUTO and not has_text_layer)
    if want_ocr and _page_has_ink(page) and tesseract_available():
        _upright_for_ocr(page)
        try:
            with _quiet_stderr():
                textpage = page.get_textpage_ocr(
                    flags=_TEXT_FLAGS, language=config.ocr_language, dpi=config.ocr_dpi, full=True
                )
            ocr_used = True
        except RuntimeError as exc:
            logger.warning("page %d: OCR failed (%s); using the text layer", number, exc)
    matrix = page.rotation_matrix  # unrotated page space -> displayed page space
    width, height = page.rect.width, page.rect.height

    if layout_boxes is not None and not ocr_used:
        blocks = _blocks_from_layout(page, layout_boxes, matrix)
    else:
        detected = _slide_regions(page, config) if ocr_used and config.layout_detector else []
        # NOTE: raster figures are OCR'd on born-digital pages only; a page without a text layer
        # is the page OCR's (ocr=auto) or stays empty (ocr=never).
        budget = budget if has_text_layer or ocr_used else None
        blocks = _blocks_from_spans(page, textpage, matrix, config, ocr_used, detected, budget)

    thumbnail = None
    if asset_dir is not None:
        blocks = _render_figures(page, blocks, asset_dir, asset_prefix, config.figure_dpi)
        name = f"p{number:04d}.png"
        page.get_pixmap(dpi=config.thumbnail_dpi).save(asset_dir / name)
        thumbnail = f"{asset_prefix}/{name}" if asset_prefix else name
    text = "\n\n".join(b.text for b in blocks if b.kind != "figure" and b.text)
    return ParsedPage(
        number=number,
        width=width,
        height=height,
        rotation=page.rotation,
        text=text,
        has_text_layer=has_text_layer,
        ocr_used=ocr_used,
        thumbnail=thumbnail,
        blocks=tuple(blocks),
    )


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence Tesseract's C-level chatter ("Image too small to scale!!") on file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _page_has_ink(page: pymupdf.Page) -> bool:
    """Whether a page without text has anything to OCR (images or vector drawings)."""
    return bool(page.get_image_info()) or bool(_drawings(page))


# A content stream this large draws over ~150,000 paths; PyMuPDF builds a dict for every one,
# ~1.5 KB a path (measured: 1, 2, 4 MB of lines take 108, 217, 434 MB; 16 MB would take ~1.7 GB).
_MAX_DRAWING_BYTES = 2 << 20


def _drawings(page: pymupdf.Page) -> list[dict]:
    """The page's vector paths for figure and table detection; none on a page too dense to analyse
    (its text, images and thumbnail are still read)."""
    size = len(page.read_contents())
    if size > _MAX_DRAWING_BYTES:
        logger.warning(
            "page %d: %d MB of drawing instructions; vector figures and ruled tables not detected",
            page.number + 1, size >> 20,
        )
        return []
    return page.get_cdrawings()


def _upright_for_ocr(page: pymupdf.Page) -> None:
    """Rotate a scanned page upright using Tesseract's orientation detection (OSD)."""
    pix = page.get_pixmap(dpi=150, colorspace=pymupdf.csGRAY)  # OSD misjudges at 100 dpi
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "page.png"
        pix.save(image)
        try:
            result = subprocess.run(
                ["tesseract", str(image), "-", "--psm", "0"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return
    rotate = re.search(r"Rotate:\s*(\d+)", result.stdout)
    confidence = re.search(r"Orientation confidence:\s*([\d.]+)", result.stdout)
    if rotate and confidence and int(rotate.group(1)) % 360 and float(confidence.group(1)) >= 1.5:
        page.set_rotation((page.rotation + int(rotate.group(1))) % 360)


_IDENTITY = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def _to_display(rect: pymupdf.Rect | tuple, matrix: pymupdf.Matrix) -> BBox:
    if tuple(matrix) == _IDENTITY:  # unrotated page: skip PyMuPDF's (slow, Python-level) Rect math
        x0, y0, x1, y1 = rect
        return (round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2))
    r = pymupdf.Rect(rect) * matrix
    r.normalize()
    return (round(r.x0, 2), round(r.y0, 2), round(r.x1, 2), round(r.y1, 2))


def _blocks_from_spans(
    page: pymupdf.Page,
    textpage: pymupdf.TextPage,
    matrix: pymupdf.Matrix,
    config: ParseConfig,
    ocr_used: bool,
    detected: list[tuple[str, BBox]] | None = None,
    budget: OcrBudget | None = None,
) -> list[ParsedBlock]:
    """The fast parser: PyMuPDF's text blocks, classified and put in reading order. On an OCR'd
    page the figure and table regions are the layout detector's (`detected`, display space).
    Figures are OCR'd against `budget` (None: not at all)."""
    data = page.get_text("dict", flags=_TEXT_FLAGS, textpage=textpage, sort=False)
    texts = [t for t in (_text_block(b, matrix) for b in data["blocks"] if b.get("type") == 0) if t]
    body_size = _body_font_size(texts)
    grid = config.tables == TableMode.GRID
    words: list[Word] | None = None  # the page's words, read once if a table needs them
    for t in texts:
        t.kind = _classify(t, body_size)
        if grid and t.kind != "caption" and _ROMAN_TABLE.match(t.text):
            t.kind = "caption"
    if grid:
        for t in [t for t in texts if t.kind == "caption" and t.lines >= 3]:
            if t.text.lower().startswith("tab"):
                words = _page_words(textpage, matrix) if words is None else words
                texts[texts.index(t) : texts.index(t) + 1] = _split_caption_from_table(t, words)

    page_area = page.rect.width * page.rect.height
    regions: list[tuple[str, BBox]] = []  # ("figure" | "table", bbox)
    if not ocr_used:  # on an OCR'd scan the whole page is one image: no figure regions
        regions += _graphic_regions(page, matrix, page_area, banded=grid)
    else:
        regions += detected or []
    captions = [t for t in texts if t.kind == "caption"]
    table_md: dict[BBox, str] = {}
    if config.table_finder and not ocr_used and _worth_table_search(page, captions):
        for bbox, markdown in _find_tables(page, matrix):
            regions.append(("table", bbox))
            table_md[bbox] = markdown
    regions = _dedupe_regions(regions)
    # Captions whose figure or table PyMuPDF did not find (vector art, tables without rules):
    # take the band between the caption and the nearest prose.
    owners: dict[BBox, BBox] = {}  # table caption -> the band guessed for it (grid mode)
    for cap in captions:
        is_table = cap.text.lower().startswith("tab")
        near = _nearest_region(cap, regions)
        if grid and is_table and near is not None:
            figure = any(k == "figure" and r == near for k, r in regions)
            swallowing = figure and _center_in(cap.bbox, near)
            if near in owners.values() or swallowing:
                # That band is the table of the caption next to this one, or a "figure" drawn
                # around the caption itself (a page frame or rules mistaken for art): not this
                # table's region.
                regions = [kr for kr in regions if not (swallowing and kr[1] == near)]
                near = None
        if not near:
            taken = list(owners.values())
            guessed = _region_near_caption(cap, texts, page.rect.width, page.rect.height, grid, taken)
            if guessed is not None:
                regions.append(("table" if is_table else "figure", guessed))
                if grid and is_table:
                    owners[cap.bbox] = guessed

    # Text inside a figure (axis labels, legends) belongs to the figure, not to the body.
    region_text: dict[BBox, list[_Text]] = {bbox: [] for _, bbox in regions}
    body: list[_Text] = []
    for t in texts:
        owner = next((bbox for _, bbox in regions if _center_in(t.bbox, bbox)), None)
        if owner is not None and t.kind != "caption":
            region_text[owner].append(t)
        else:
            body.append(t)

    items: list[tuple[str, BBox, str, _Text | None]] = [(t.kind, t.bbox, t.text, t) for t in body]
    for kind, bbox in regions:
        inner = sorted(region_text[bbox], key=lambda t: (t.bbox[1], t.bbox[0]))
        if kind == "table" and ocr_used:
            # A slide's table: the figure engine's reading of the region (Tesseract's page mode
            # often skips ruled cells), else the page OCR's words, as a grid.
            pieces = _ocr_region(page, bbox, config, budget, matrix, photo_test=False)
            if pieces is None:
                words = _page_words(textpage, matrix) if words is None else words
                pieces = figures.phrases([w for w in words if _center_in(w.bbox, bbox)])
            text = table_markdown(pieces) or _rows_markdown(inner)
        elif kind == "table" and bbox not in table_md and grid:
            words = _page_words(textpage, matrix) if words is None else words
            text = table_markdown(_region_words(words, inner)) or _rows_markdown(inner)
        elif kind == "table":
            text = table_md.get(bbox) or _rows_markdown(inner)
        elif ocr_used:
            # A slide's figure: the figure engine's reading in rows, else the page OCR's words.
            pieces = _ocr_region(page, bbox, config, budget, matrix)
            if pieces is None:
                words = _page_words(textpage, matrix) if words is None else words
                pieces = figures.phrases([w for w in words if _center_in(w.bbox, bbox)])
            text = figures.figure_text(pieces)
        else:
            text = " ".join(t.text for t in inner)
            if not inner or _raster_share(page, bbox, matrix) >= 0.5:
                pieces = _ocr_region(page, bbox, config, budget, matrix)
                text = "\n".join(p for p in (text, figures.figure_text(pieces or [])) if p)
        items.append((kind, bbox, text, None))
    ordered = reading_order_of([it[1] for it in items], page.rect.width)
    items = [items[i] for i in ordered]

    blocks = [ParsedBlock(kind, bbox, text, n) for n, (kind, bbox, text, _) in enumerate(items)]
    return _link_captions(blocks, owners)


def _raster_share(page: pymupdf.Page, bbox: BBox, matrix: pymupdf.Matrix) -> float:
    """Share of a region (display space) covered by the page's raster images."""
    area = _area(bbox)
    if area <= 0:
        return 0.0
    covered = 0.0
    for info in page.get_image_info():
        r = _to_display(pymupdf.Rect(info["bbox"]) & page.rect, matrix)
        ix = max(0.0, min(r[2], bbox[2]) - max(r[0], bbox[0]))
        iy = max(0.0, min(r[3], bbox[3]) - max(r[1], bbox[1]))
        covered += ix * iy
    return min(1.0, covered / area)


def _render_rgb(page: pymupdf.Page, clip: pymupdf.Rect | None, dpi: int) -> np.ndarray:
    """A page (or a clip of it, unrotated page space) rendered as an RGB array."""
    pix = page.get_pixmap(dpi=dpi, clip=clip, colorspace=pymupdf.csRGB, alpha=False)
    return np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3)


# The longest side a figure crop is OCR'd at: a full-page infographic at 150 dpi would be
# ~1700 px, and OCR time grows with the pixels (see BENCHMARKS.md, issue 23).
_OCR_MAX_SIDE = 1600


def _ocr_region(
    page: pymupdf.Page,
    bbox: BBox,
    config: ParseConfig,
    budget: OcrBudget | None,
    matrix: pymupdf.Matrix,
    photo_test: bool = True,
) -> list[Word] | None:
    """The text pieces inside a region (display space) read by the figure OCR engine, boxes in
    display space; [] for a photograph; None when the engine is off or missing, the region is
    small, or there is no budget (None) or it is spent."""
    if config.figure_ocr == FigureOcr.OFF or budget is None or budget.left <= 0:
        return None
    width, height = bbox[2] - bbox[0], bbox[3] - bbox[1]
    if min(width, height) < config.figure_ocr_min_side:
        return None
    clip = (pymupdf.Rect(bbox) * ~page.rotation_matrix) & page.rect
    if clip.is_empty:
        return None
    started = time.perf_counter()
    dpi = max(36, min(config.figure_ocr_dpi, int(72 * _OCR_MAX_SIDE / max(width, height))))
    image = _render_rgb(page, clip, dpi)
    if photo_test and figures.looks_like_photo(image):
        budget.photos += 1
        return []
    try:
        pieces = figures.ocr_words(image, config.figure_ocr)
    except FigureOcrError as exc:
        logger.warning("page %d: %s", page.number + 1, exc)
        budget.left = 0  # NOTE: the engine is missing: say so once a document, not per figure
        return None
    finally:
        budget.spend(time.perf_counter() - started)
    scale = dpi / 72  # pixels a point
    return [
        Word(
            _to_display(
                (
                    clip.x0 + p.bbox[0] / scale,
                    clip.y0 + p.bbox[1] / scale,
                    clip.x0 + p.bbox[2] / scale,
                    clip.y0 + p.bbox[3] / scale,
                ),
                matrix,
            ),
            p.text,
        )
        for p in pieces
    ]


def _slide_regions(page: pymupdf.Page, config: ParseConfig) -> list[tuple[str, BBox]]:
    """Figure and table regions (display space) of an OCR'd page that looks like a slide or an
    infographic (not a plain scan), from the layout detector; none otherwise."""
    width, height = page.rect.width, page.rect.height
    if not figures.is_slide_like(_render_rgb(page, None, 24), width, height):
        return []
    dpi = max(36, int(72 * 800 / max(width, height)))  # NOTE: the detector reads 800 x 608
    image = _render_rgb(page, None, dpi)
    try:
        boxes = figures.detect_regions(image)
    except FigureOcrError as exc:
        logger.warning("page %d: %s", page.number + 1, exc)
        return []
    scale = image.shape[1] / width  # pixels a point of the displayed page
    page_area = width * height
    out = []
    for kind, (x0, y0, x1, y1) in boxes:
        box = (
            round(max(0.0, x0 / scale), 2),
            round(max(0.0, y0 / scale), 2),
            round(min(width, x1 / scale), 2),
            round(min(height, y1 / scale), 2),
        )
        # NOTE: a "figure" over the whole slide is its background picture, not a region.
        if 0.01 * page_area <= _area(box) <= 0.85 * page_area:
            out.append((kind, box))
    return out


def _text_block(block: dict, matrix: pymupdf.Matrix) -> _Text | None:
    lines_text: list[str] = []
    span_boxes: list[tuple[BBox, str]] = []
    sizes: dict[float, int] = {}
    bold_chars = 0
    total = 0
    for line in block.get("lines", []):
        spans = line.get("spans", [])
        text = "".join(s["text"] for s in spans).strip()
        if not text:
            continue
        lines_text.append(text)
        for s in spans:
            if s["text"].strip():
                span_boxes.append((_to_display(s["bbox"], matrix), s["text"].strip()))
            n = len(s["text"].strip())
            total += n
            sizes[round(s["size"], 1)] = sizes.get(round(s["size"], 1), 0) + n
            if s["flags"] & pymupdf.TEXT_FONT_BOLD or "bold" in s["font"].lower():
                bold_chars += n
    if not lines_text or total == 0:
        return None
    text = _join_lines(lines_text)
    size = max(sizes, key=sizes.get)
    bold = bold_chars >= 0.8 * total
    return _Text(_to_display(block["bbox"], matrix), text, size, bold, len(lines_text), spans=tuple(span_boxes))


def _join_lines(lines: list[str]) -> str:
    out = lines[0]
    for line in lines[1:]:
        if out.endswith("-") and line[:1].islower():
            out = out[:-1] + line
        else:
            out = f"{out} {line}"
    return re.sub(r"\s+", " ", out).strip()


def _body_font_size(texts: list[_Text]) -> float:
    if not texts:
        return 10.0
    weighted = [t.size for t in texts for _ in range(min(len(t.text) // 20 + 1, 50))]
    return statistics.median(weighted)


def _classify(t: _Text, body_size: float) -> str:
    if _CAPTION.match(t.text):
        return "caption"
    short = len(t.text) <= 160 and t.lines <= 3
    if short and t.size >= body_size * 1.15 and any(c.isalpha() for c in t.text):
        return "heading"
    if short and t.bold and t.lines <= 2 and not t.text.endswith((".", ",", ";")) and len(t.text) > 2:
        return "heading"
    if _BULLET.match(t.text):
        return "list"
    return "text"


def _graphic_regions(
    page: pymupdf.Page, matrix: pymupdf.Matrix, page_area: float, banded: bool = False
) -> list[tuple[str, BBox]]:
    """Figures (images, clusters of vector drawings) and ruled tables (clusters of rules); with
    `banded`, also tables drawn as a stack of row bands (shaded rows, rules: financial
    statements), which win over a figure they overlap (see `_dedupe_regions`)."""
    images: list[pymupdf.Rect] = []
    for info in page.get_image_info():
        r = pymupdf.Rect(info["bbox"]) & page.rect
        if not r.is_empty:
            images.append(r)
    drawings = [pymupdf.Rect(d["rect"]) for d in _drawings(page)][:5000]
    out: list[tuple[str, BBox]] = []
    for r in _cluster(images + _cluster(drawings, gap=12), gap=4):
        area = r.width * r.height
        # Ignore specks, single rules and full-page backgrounds.
        if not (r.width >= 48 and r.height >= 24 and 0.01 * page_area <= area <= 0.85 * page_area):
            continue
        inside = [d for d in drawings if r.contains(d)]
        rules = sum(1 for d in inside if d.height <= 2 or d.width <= 2)
        has_image = any(r.contains(i) for i in images)
        kind = "table" if not has_image and rules >= 3 and rules >= 0.8 * len(inside) else "figure"
        out.append((kind, _to_display(r, matrix)))
    if banded:
        out += [("table", _to_display(r, matrix)) for r in _band_stacks(drawings, page.rect.width)]
    return out


def _band_stacks(drawings: list[pymupdf.Rect], page_width: float) -> list[pymupdf.Rect]:
    """Regions where at least three wide, flat row bands (shaded rows or rules, each possibly
    drawn in pieces; two or more shaded) are stacked less than a few lines apart: the rows of a
    table."""
    rows: dict[tuple[int, int], pymupdf.Rect] = {}
    for d in drawings:
        if d.height <= 25 and d.width >= 4:
            key = (round(d.y0), round(d.y1))
            rows[key] = rows[key] | d if key in rows else pymupdf.Rect(d)
    bands = sorted((r for r in rows.values() if r.width >= 0.3 * page_width), key=lambda r: r.y0)
    stacks: list[list[pymupdf.Rect]] = []
    for band in bands:
        last = stacks[-1][-1] if stacks else None
        near = last is not None and band.y0 - last.y1 <= 40
        if near and _h_overlap(tuple(band), tuple(last)) >= 0.5 * min(band.width, last.width):
            stacks[-1].append(band)
        else:
            stacks.append([band])
    out = []
    for stack in stacks:
        # NOTE: at least two shaded rows: stacks of rules alone are booktabs tables, found above.
        if len(stack) >= 3 and sum(band.height >= 4 for band in stack) >= 2:
            region = pymupdf.Rect(stack[0])
            for band in stack[1:]:
                region |= band
            out.append(region)
    return out


def _split_caption_from_table(cap: _Text, words: list[Word]) -> list[_Text]:
    """A "Table N" caption block that runs on into the table's rows (MuPDF grouped them): cut at
    the first line after the first with a gap wider than a word space could be."""
    rows = group_rows([w for w in words if _center_in(w.bbox, cap.bbox)])

    def has_cells(row: list[Word]) -> bool:
        pairs = zip(row, row[1:], strict=False)
        return any(b.bbox[0] - a.bbox[2] > b.bbox[3] - b.bbox[1] for a, b in pairs)

    cut = next((i for i in range(1, len(rows)) if has_cells(rows[i])), None)
    if cut is None:
        return [cap]

    def part(rows: list[list[Word]], kind: str) -> _Text:
        boxes = [w.bbox for row in rows for w in row]
        bbox = (
            min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes),
        )
        text = " ".join(w.text for row in rows for w in row)
        spans = tuple((w.bbox, w.text) for row in rows for w in row)
        return _Text(bbox, text, cap.size, cap.bold, len(rows), kind, spans)

    return [part(rows[:cut], "caption"), part(rows[cut:], "text")]


def _page_words(textpage: pymupdf.TextPage, matrix: pymupdf.Matrix) -> list[Word]:
    words = textpage.extractWORDS()
    if tuple(matrix) == _IDENTITY:  # NOTE: checked once; per word it cost more than the words
        return [Word((w[0], w[1], w[2], w[3]), w[4]) for w in words]
    return [Word(_to_display(w[:4], matrix), w[4]) for w in words]


def _region_words(words: list[Word], texts: list[_Text]) -> list[Word]:
    """The words of a table region's text blocks (not of prose or captions beside it)."""
    if not texts:
        return []
    outline = (
        min(t.bbox[0] for t in texts), min(t.bbox[1] for t in texts),
        max(t.bbox[2] for t in texts), max(t.bbox[3] for t in texts),
    )
    near = [w for w in words if _center_in(w.bbox, outline)]  # NOTE: cheap filter first
    return [w for w in near if any(_center_in(w.bbox, t.bbox) for t in texts)]


def _rows_markdown(texts: list[_Text]) -> str:
    """A Markdown table from the spans inside a table region: rows by baseline, cells by gaps."""
    spans = sorted((box, text) for t in texts for box, text in t.spans)
    rows: list[list[tuple[BBox, str]]] = []
    for box, text in sorted(spans, key=lambda bt: ((bt[0][1] + bt[0][3]) / 2, bt[0][0])):
        middle = (box[1] + box[3]) / 2
        if rows and abs(middle - (rows[-1][0][0][1] + rows[-1][0][0][3]) / 2) <= 3:
            rows[-1].append((box, text))
        else:
            rows.append([(box, text)])
    lines = []
    for row in rows:
        row.sort(key=lambda bt: bt[0][0])
        cells: list[str] = []
        last_x1 = None
        for box, text in row:
            if last_x1 is not None and box[0] - last_x1 < 6:
                cells[-1] = f"{cells[-1]} {text}"
            else:
                cells.append(text)
            last_x1 = box[2]
        lines.append("| " + " | ".join(cells) + " |")
    if len(lines) > 1:
        width = max(line.count(" | ") + 1 for line in lines)
        lines.insert(1, "|" + "---|" * width)
    return "\n".join(lines)


def _cluster(rects: list[pymupdf.Rect], gap: float) -> list[pymupdf.Rect]:
    """Union of rectangles that overlap or lie within `gap` points of each other."""
    # NOTE: a ruled line has an empty rect (zero height or width); pad it so it still counts.
    boxes = np.array([tuple(r + (-0.5, -0.5, 0.5, 0.5)) for r in rects if r.is_valid], dtype=np.float64)
    if len(boxes) > 4000:  # NOTE: keep the pairwise matrix small on drawing-heavy pages
        boxes = boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:4000]]
    while len(boxes) > 1:
        near = (
            (boxes[:, None, 0] - gap <= boxes[None, :, 2])
            & (boxes[None, :, 0] <= boxes[:, None, 2] + gap)
            & (boxes[:, None, 1] - gap <= boxes[None, :, 3])
            & (boxes[None, :, 1] <= boxes[:, None, 3] + gap)
        )
        count, labels = connected_components(csr_matrix(near), directed=False)
        if count == len(boxes):
            break
        merged = np.empty((count, 4))
        for i in range(count):
            group = boxes[labels == i]
            merged[i] = (group[:, 0].min(), group[:, 1].min(), group[:, 2].max(), group[:, 3].max())
        boxes = merged
    return [pymupdf.Rect(*b) for b in boxes]


def _worth_table_search(page: pymupdf.Page, captions: list[_Text]) -> bool:
    """Table detection is slow (~0.3 s a page): run it on pages with a 'Table N' caption or a
    ruled grid (several horizontal and vertical rules, or many horizontal ones, as in filings)."""
    if any(c.text.lower().startswith("tab") for c in captions):
        return True
    horizontal = vertical = 0
    for d in _drawings(page):
        x0, y0, x1, y1 = d["rect"]
        if y1 - y0 <= 2 and x1 - x0 >= 30:
            horizontal += 1
        elif x1 - x0 <= 2 and y1 - y0 >= 10:
            vertical += 1
    return (horizontal >= 3 and vertical >= 3) or horizontal >= 8


def _find_tables(page: pymupdf.Page, matrix: pymupdf.Matrix) -> Iterator[tuple[BBox, str]]:
    try:
        found = page.find_tables(use_layout=False)
    except (RuntimeError, ValueError, IndexError) as exc:  # MuPDF table code on odd pages
        logger.debug("page %d: table detection failed (%s)", page.number + 1, exc)
        return
    for table in found.tables:
        if table.row_count < 2 or table.col_count < 2:
            continue
        try:
            markdown = table.to_markdown(clean=False).strip()
        except (RuntimeError, ValueError, IndexError):
            continue
        yield _to_display(table.bbox, matrix), markdown


def _dedupe_regions(regions: list[tuple[str, BBox]]) -> list[tuple[str, BBox]]:
    """Drop figure regions that mostly overlap a table (tables win) or another region."""
    out: list[tuple[str, BBox]] = []
    for kind, bbox in sorted(regions, key=lambda kr: (kr[0] != "table", -_area(kr[1]))):
        if all(_overlap(bbox, other) < 0.6 for _, other in out):
            out.append((kind, bbox))
    return out


def _area(b: BBox) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _overlap(a: BBox, b: BBox) -> float:
    """Intersection over the smaller box."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min(_area(a), _area(b))
    return ix * iy / smaller if smaller > 0 else 0.0


def _center_in(inner: BBox, outer: BBox) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] - 1 <= cx <= outer[2] + 1 and outer[1] - 1 <= cy <= outer[3] + 1


def _h_overlap(a: BBox, b: BBox) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0]))


def _nearest_region(cap: _Text, regions: list[tuple[str, BBox]]) -> BBox | None:
    best, best_gap = None, 1e9
    for _, bbox in regions:
        if _h_overlap(cap.bbox, bbox) < 0.3 * min(cap.bbox[2] - cap.bbox[0], bbox[2] - bbox[0]):
            continue
        gap = max(bbox[1] - cap.bbox[3], cap.bbox[1] - bbox[3], 0.0)
        if gap < best_gap and gap <= 60:
            best, best_gap = bbox, gap
    return best


def _is_prose(t: _Text) -> bool:
    """A paragraph of running text (not a table row, label or number column)."""
    digits = sum(c.isdigit() for c in t.text)
    return t.kind in ("text", "list", "heading", "caption") and len(t.text) > 80 and digits < 0.15 * len(t.text)


def _region_near_caption(
    cap: _Text,
    texts: list[_Text],
    page_width: float,
    page_height: float,
    tabular: bool = False,
    taken: list[BBox] | None = None,
) -> BBox | None:
    """The band between a caption and the nearest prose in its column: above it for figures
    (and tables captioned below), below it for tables captioned above.

    With `tabular`, a table's band also stops at other captions, a short caption centred across
    both columns widens to the page, and of the two bands the one holding more table-like spans
    (short pieces of text, not prose) wins; a band that is another caption's table (`taken`)
    is not a candidate."""
    x0, x1 = cap.bbox[0], cap.bbox[2]
    if x1 - x0 < 0.3 * page_width:  # a short caption line: widen to its column
        x0, x1 = (0.0, page_width / 2) if x1 <= page_width / 2 else (page_width / 2, page_width)
        if tabular and cap.bbox[0] < page_width / 2 < cap.bbox[2]:
            x0, x1 = 0.0, page_width
    column = [t for t in texts if t is not cap and _h_overlap(t.bbox, (x0, 0, x1, 0)) > 0]
    is_table = cap.text.lower().startswith("tab")
    # NOTE: rows of a table may come as one long block; their lines are short, prose lines not.
    stops = (
        (lambda t: (_is_prose(t) and len(t.text) >= 30 * t.lines) or t.kind == "caption")
        if tabular and is_table
        else _is_prose
    )
    top = max((t.bbox[3] for t in column if t.bbox[3] <= cap.bbox[1] and stops(t)), default=0.0)
    above = (x0, top + 2, x1, cap.bbox[1] - 2)
    directions = [above]
    if is_table:
        bottom = min((t.bbox[1] for t in column if t.bbox[1] >= cap.bbox[3] and stops(t)), default=page_height)
        below = (x0, cap.bbox[3] + 2, x1, bottom - 2)
        has_content = lambda r: any(_center_in(t.bbox, r) for t in column)  # noqa: E731
        directions = [r for r in (above, below) if has_content(r)] or directions
        if tabular:
            directions = [r for r in directions if all(_overlap(r, t) < 0.5 for t in taken or [])]
            directions.sort(key=lambda r: -_table_spans(column, r))
    for r in directions:
        if r[3] - r[1] >= 30:
            return tuple(round(v, 2) for v in r)
    return None


def _table_spans(texts: list[_Text], region: BBox) -> int:
    """How many short spans (cells, not prose) lie inside a region."""
    return sum(
        1 for t in texts if not _is_prose(t) and t.kind != "caption"
        for box, _ in t.spans if _center_in(box, region)
    )


def reading_order_of(boxes: list[BBox], page_width: float) -> list[int]:
    """Indices of `boxes` in reading order; two-column pages read left column, then right.

    Boxes spanning both columns (titles, wide figures) cut the page into bands; within a band
    the left column is read before the right one.
    """
    mid = page_width / 2
    tol = page_width * 0.04
    left = [i for i, b in enumerate(boxes) if b[2] <= mid + tol]
    right = [i for i, b in enumerate(boxes) if b[0] >= mid - tol and i not in left]
    two_columns = (
        len(left) >= 2
        and len(right) >= 2
        and any(boxes[i][1] < boxes[j][3] and boxes[j][1] < boxes[i][3] for i in left for j in right)
    )
    if not two_columns:
        return sorted(range(len(boxes)), key=lambda i: (round(boxes[i][1] / 4), boxes[i][0]))
    columned = set(left) | set(right)
    spanning = sorted((i for i in range(len(boxes)) if i not in columned), key=lambda i: boxes[i][1])
    order: list[int] = []
    placed: set[int] = set()
    for cut in [*spanning, None]:
        limit = boxes[cut][1] if cut is not None else float("inf")
        for column in (left, right):
            band = [i for i in column if i not in placed and boxes[i][1] < limit]
            band.sort(key=lambda i: (boxes[i][1], boxes[i][0]))
            order += band
            placed.update(band)
        if cut is not None:
            order.append(cut)
            placed.add(cut)
    return order


def _link_captions(blocks: list[ParsedBlock], owners: dict[BBox, BBox] | None = None) -> list[ParsedBlock]:
    """Point each caption at its figure or table: the region found for it (`owners`, caption
    bbox -> region bbox), else the nearest one it overlaps horizontally."""
    regions = [b for b in blocks if b.kind in ("figure", "table")]
    owners = owners or {}
    out = []
    for b in blocks:
        if b.kind == "caption" and regions:
            wants = "table" if b.text.lower().startswith("tab") else "figure"
            fake = _Text(b.bbox, b.text, 0, False, 1)
            candidates = [(r.kind, r.bbox) for r in regions if r.kind == wants] or [
                (r.kind, r.bbox) for r in regions
            ]
            target = owners.get(b.bbox) or _nearest_region(fake, candidates)
            if target is not None:
                owner = next(r for r in regions if r.bbox == target)
                b = replace(b, caption_of=owner.reading_order)
        out.append(b)
    # A figure's text is more useful with its caption in front of it.
    captions = {b.caption_of: b.text for b in out if b.caption_of is not None}
    return [
        replace(b, text=f"{captions[b.reading_order]}\n{b.text}".strip())
        if b.reading_order in captions
        else b
        for b in out
    ]


def _render_figures(
    page: pymupdf.Page, blocks: list[ParsedBlock], asset_dir: Path, prefix: str, dpi: int
) -> list[ParsedBlock]:
    out = []
    inverse = ~page.rotation_matrix
    for b in blocks:
        if b.kind in ("figure", "table"):
            clip = (pymupdf.Rect(b.bbox) * inverse) & page.rect
            if not clip.is_empty and clip.width > 4 and clip.height > 4:
                name = f"p{page.number + 1:04d}-{b.kind}{b.reading_order:03d}.png"
                page.get_pixmap(dpi=dpi, clip=clip).save(asset_dir / name)
                b = replace(b, asset=f"{prefix}/{name}" if prefix else name)
        out.append(b)
    return out


# ------------------------------------------------------------------------------ layout model

_LAYOUT_KIND = {
    "title": "heading",
    "section-header": "heading",
    "caption": "caption",
    "picture": "figure",
    "table": "table",
    "list-item": "list",
}
_LAYOUT_SKIP = {"page-header", "page-footer"}


def _layout_boxes(path: Path, doc: pymupdf.Document) -> list[list[dict]]:
    """Boxes of PyMuPDF's layout-analysis model, one list per page (quality mode, ~1 page/s)."""
    import json

    import pymupdf.layout  # noqa: F401 - activates the layout model inside pymupdf4llm
    import pymupdf4llm

    try:
        data = json.loads(pymupdf4llm.to_json(doc, use_ocr=False))
    except (RuntimeError, ValueError) as exc:
        raise ParseError(f"{path.name}: layout analysis failed ({exc}); try --parser fast") from exc
    return [page.get("boxes", []) for page in data["pages"]]


def _blocks_from_layout(
    page: pymupdf.Page, boxes: list[dict], matrix: pymupdf.Matrix
) -> list[ParsedBlock]:
    blocks: list[ParsedBlock] = []
    for box in boxes:
        cls = box.get("boxclass", "text")
        if cls in _LAYOUT_SKIP:
            continue
        rect = pymupdf.Rect(box["x0"], box["y0"], box["x1"], box["y1"])
        kind = _LAYOUT_KIND.get(cls, "text")
        table = box.get("table") or {}
        if kind == "table" and table.get("markdown"):
            text = table["markdown"].strip()
        else:
            text = re.sub(r"\s+", " ", page.get_textbox(rect)).strip()
        if kind == "text" and _CAPTION.match(text):
            kind = "caption"
        if not text and kind not in ("figure", "table"):
            continue
        blocks.append(ParsedBlock(kind, _to_display(rect, matrix), text, len(blocks)))
    return _link_captions(blocks)
