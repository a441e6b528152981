"""Text inside figures: OCR of figure crops, read in rows, and the cheap tests that bound its cost.

Raster figures (charts, infographics, screenshots) carry their labels, axis ticks, legends and
numbers only as pixels. `ocr_words` reads a crop with PP-OCRv4 (RapidOCR on onnxruntime, weights
in the package) or Tesseract (the CLI the scanned-page OCR already uses); `figure_text` lays the
pieces out in rows, so a chart's axis ticks stay on one line and its legend on another:

    Figure text:
    Total revenue: $468 million
    $90 | $84 | $75
    2009 | 2010 | 2011

Pieces of one row are joined by " | " (they are separate labels, not a sentence); rows are lines,
top to bottom. `looks_like_photo` skips crops that are photographs (many colours, no flat areas)
before any OCR runs; `is_slide_like` tells a rendered slide or infographic from a plain scan.
Numbers behind each threshold: BENCHMARKS.md, "Text inside figures and slide layout (issue 23)".
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.config import FigureOcr
from pipeline.ingestion.tables import Word, group_rows

logger = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]

FIGURE_TEXT_HEADER = "Figure text:"

# A crop whose 8 most common colours (quantised to 5 bits a channel) cover less than this share
# of its pixels is a photograph: charts, diagrams, screenshots and infographics are drawn in flat
# colours (0.71-0.97 on the labelled sample), photographs are not (0.16-0.45).
PHOTO_FLAT_SHARE = 0.6
_FLAT_COLOURS = 8
# A portrait page is an infographic, not a scan, when this share of its pixels is strongly
# coloured (max - min channel >= 80): tinted or stamped scans reach ~0.03 (see BENCHMARKS.md).
SLIDE_SATURATED_SHARE = 0.10

_LOCK = threading.Lock()
_ENGINES: dict[str, object] = {}


class FigureOcrError(Exception):
    """The figure OCR engine cannot run; the message names the engine and the fix."""


def _cached_engine(name: str, build: Callable[[], object]) -> object:
    """The engine `name`, built once per process (parser workers keep theirs between files)."""
    with _LOCK:
        if name not in _ENGINES:
            _ENGINES[name] = build()
        return _ENGINES[name]


def _rapidocr():  # noqa: ANN202 - RapidOCR has no public type to name
    return _cached_engine("rapidocr", _build_rapidocr)


def _build_rapidocr():  # noqa: ANN202
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        raise FigureOcrError(
            "figure OCR 'rapidocr' needs rapidocr-onnxruntime (pip install "
            "rapidocr-onnxruntime), or set FOLIO_PARSE__FIGURE_OCR=tesseract|off"
        ) from exc
    # NOTE: 'min' would upscale every crop to 736 px on its short side (slow, no gain on
    # chart text at 150 dpi); 'max' only shrinks crops larger than 1280 px.
    # One onnxruntime thread per model: crops are small, and on 2 cores the default
    # (all cores) spent twice the CPU for the same crops (8 crops: 8.3 -> 4.0 CPU s).
    threads = {
        f"{model}_{kind}_op_num_threads": 1
        for model in ("det", "cls", "rec")
        for kind in ("intra", "inter")
    }
    engine = RapidOCR(
        det_limit_side_len=1280,
        det_limit_type="max",
        use_cls=False,
        print_verbose=False,
        **threads,
    )
    for name in ("RapidOCR", "rapidocr_onnxruntime"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return engine


def ocr_words(image: np.ndarray, engine: FigureOcr) -> list[Word]:
    """The text pieces of an RGB image (H x W x 3, uint8), boxes in its pixels.

    RapidOCR returns phrases (a detected text line each); Tesseract returns words, which are
    joined here into phrases where they sit a word space apart on one line.

    Raises:
        FigureOcrError: the engine is not installed.
    """
    if engine == FigureOcr.RAPIDOCR:
        result, _ = _rapidocr()(image)
        out = []
        for points, text, score in result or []:
            text = str(text).strip()
            if not text or float(score) < 0.5:
                continue
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            out.append(Word((min(xs), min(ys), max(xs), max(ys)), text))
        return out
    if engine == FigureOcr.TESSERACT:
        return phrases(_tesseract_words(image))
    return []


def _tesseract_words(image: np.ndarray) -> list[Word]:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crop.png"
        Image.fromarray(image).save(path)
        try:
            # NOTE: --psm 11 (sparse text) finds scattered chart labels that the page mode
            # (--psm 3) merges into columns or drops.
            result = subprocess.run(
                ["tesseract", str(path), "-", "--psm", "11", "tsv"],
                # NOTE: one thread: Tesseract's OpenMP threads only contend on small crops.
                env={**os.environ, "OMP_THREAD_LIMIT": "1"},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except FileNotFoundError as exc:
            raise FigureOcrError(
                "figure OCR 'tesseract' needs the tesseract program (apt-get install tesseract-ocr), "
                "or set FOLIO_PARSE__FIGURE_OCR=rapidocr|off"
            ) from exc
        except subprocess.TimeoutExpired:
            logger.warning("figure OCR: tesseract took over 120 s on one crop; skipped")
            return []
    words = []
    for line in result.stdout.splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) < 12 or not cols[11].strip():
            continue
        with contextlib.suppress(ValueError):
            if (
                float(cols[10]) < 30
            ):  # NOTE: below 30 Tesseract's "words" are mostly noise on charts
                continue
            x, y, w, h = (int(cols[i]) for i in (6, 7, 8, 9))
            words.append(Word((x, y, x + w, y + h), cols[11].strip()))
    return words


def phrases(words: list[Word]) -> list[Word]:
    """Words of one row closer than a word space joined into one piece (a label, a title line)."""
    out: list[Word] = []
    for row in group_rows(words):
        last: Word | None = None
        for word in row:
            height = word.bbox[3] - word.bbox[1]
            if last is not None and word.bbox[0] - last.bbox[2] <= 0.6 * height:
                box = (
                    min(last.bbox[0], word.bbox[0]),
                    min(last.bbox[1], word.bbox[1]),
                    max(last.bbox[2], word.bbox[2]),
                    max(last.bbox[3], word.bbox[3]),
                )
                last = Word(box, f"{last.text} {word.text}")
                out[-1] = last
            else:
                last = word
                out.append(word)
    return out


def figure_text(pieces: Sequence[Word]) -> str:
    """The pieces laid out in rows (top to bottom, each left to right, " | " between pieces)
    under a "Figure text:" line; "" without pieces."""
    rows = group_rows(list(pieces))
    lines = [" | ".join(p.text for p in row) for row in rows]
    lines = [line for line in lines if line.strip()]
    return "\n".join([FIGURE_TEXT_HEADER, *lines]) if lines else ""


def flat_share(image: np.ndarray) -> float:
    """Share of a crop's pixels covered by its few most common colours (5 bits a channel),
    read on a ~96-pixel thumbnail: near 1 for charts and diagrams, low for photographs."""
    small = _thumbnail(image, 96)
    q = (small[..., :3] >> 3).astype(np.int32)
    codes = (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]
    counts = np.bincount(codes.ravel(), minlength=1 << 15)
    top = np.sort(counts)[-_FLAT_COLOURS:].sum()
    return float(top) / max(1, codes.size)


def looks_like_photo(image: np.ndarray) -> bool:
    """Whether a crop is a photograph (skip its OCR): few pixels in flat colours."""
    return flat_share(image) < PHOTO_FLAT_SHARE


def saturated_share(image: np.ndarray) -> float:
    """Share of a thumbnail's pixels that are strongly coloured (max - min channel >= 80)."""
    small = _thumbnail(image, 128).astype(np.int16)
    spread = small[..., :3].max(axis=2) - small[..., :3].min(axis=2)
    return float((spread >= 80).mean())


def is_slide_like(image: np.ndarray, width: float, height: float) -> bool:
    """Whether a rendered page without a text layer (upright) is a slide or an infographic
    rather than a plain scan: landscape (slides are 4:3 or 16:9; scanned pages are portrait once
    upright), or portrait with large strongly coloured areas. Grey level alone does not tell
    them apart: most decks are grey, and scans of tinted paper are not."""
    return width > 1.1 * height or saturated_share(image) >= SLIDE_SATURATED_SHARE


class OcrBudget:
    """Seconds of figure OCR one document may still spend (ParseConfig.figure_ocr_budget_s)."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds
        self.spent = 0.0
        self.figures = 0  # figures OCR'd
        self.photos = 0  # crops skipped as photographs

    def spend(self, seconds: float) -> None:
        self.left -= seconds
        self.spent += seconds
        self.figures += 1


def _layout_model():  # noqa: ANN202 - RapidLayout has no public type to name
    return _cached_engine("layout", _build_layout_model)


def _build_layout_model():  # noqa: ANN202
    try:
        import rapid_layout
        from rapid_layout import RapidLayout
    except ImportError as exc:
        raise FigureOcrError(
            "the layout detector needs rapid-layout (pip install rapid-layout), or set "
            "FOLIO_PARSE__LAYOUT_DETECTOR=false"
        ) from exc
    # NOTE: the CDLA model ships inside the package; naming its file stops rapid-layout
    # from looking for it online.
    model = Path(rapid_layout.__file__).parent / "models" / "layout_cdla.onnx"
    if not model.is_file():
        raise FigureOcrError(f"rapid-layout has no {model.name}; reinstall rapid-layout")
    # NOTE: rapid-layout's loggers (made as its modules load) print INFO lines with
    # their own handlers; silence them while the model loads.
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        return RapidLayout(model_type="pp_layout_cdla", model_dir_or_path=str(model))
    finally:
        logging.disable(previous)


# Layout classes kept as regions; text, titles, headers and captions stay OCR'd text blocks.
_LAYOUT_REGIONS = {"figure": "figure", "table": "table"}


def detect_regions(image: np.ndarray, min_score: float = 0.5) -> list[tuple[str, BBox]]:
    """Figure and table regions of a rendered page (RGB), boxes in its pixels, by rapid-layout's
    PP-Layout CDLA detector.

    Raises:
        FigureOcrError: rapid-layout or its model is missing.
    """
    result = _layout_model()(image)
    out = []
    boxes = zip(result.boxes or [], result.class_names or [], result.scores or [], strict=False)
    for box, name, score in boxes:
        kind = _LAYOUT_REGIONS.get(str(name))
        if kind is not None and float(score) >= min_score:
            out.append((kind, (float(box[0]), float(box[1]), float(box[2]), float(box[3]))))
    return out


def _thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    step = max(1, max(image.shape[0], image.shape[1]) // side)
    return image[::step, ::step]
