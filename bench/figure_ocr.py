"""Text inside figures: PP-OCRv4 (RapidOCR) against Tesseract on labelled figure crops, the
photo test, and what figure OCR and the slide layout detector cost in ingest speed (issue 23).

Usage:
    python -m bench.figure_ocr [--data DIR] [--sample] [--slides] [--speed] [--repeats 2]
        [--deck-pages 12] [--out FILE]

`--sample`: tests/pipeline/data/figure_words.json lists figure crops of the dev documents (file,
page, box in PDF points, kind) with every legible word typed from the rendered crop; photographs
have none. Each crop is rendered as the parser renders it (ParseConfig.figure_ocr_dpi, longest
side capped) and read by both engines; words are lower-cased runs of letters and digits (inner
".,:'" kept: "0.15", "10:08"), matched as multisets: recall = matched / expected, precision =
matched / read. Seconds a crop are wall time on this shared machine. The photo test
(`figures.looks_like_photo`) is scored on the same crops.

`--speed`: the born-digital files of bench/ingest.py and the first `--deck-pages` pages of an
image-only slide deck are ingested (parse, chunk, store; no index; one worker) with figure OCR
off, RapidOCR and Tesseract, and the deck also with the layout detector alone and without it;
born-digital variants alternate `--repeats` times, the best pages/s of each is reported, and the
least CPU seconds a page (this process and its children: workers, Tesseract), which a shared,
loaded machine distorts far less than wall time.

`--slides`: how the slide rule (`figures.is_slide_like`) sorts the pages without a text layer of
the dev documents and the robustness scans.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pymupdf

from bench.ingest import BORN_DIGITAL, SCANNED
from pipeline.config import ChunkConfig, FigureOcr, IngestConfig, ParseConfig
from pipeline.ingestion import figures
from pipeline.ingestion.ingest import ingest
from storage import StorageConfig, open_library

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "pipeline" / "data" / "figure_words.json"
DECK = "mmlongbench/dev/documents/bigdatatrends-120723191058-phpapp02_95.pdf"
_TOKEN = re.compile(r"[a-z0-9]+(?:[.,:'][a-z0-9]+)*")
_MAX_SIDE = 1600  # as parse._OCR_MAX_SIDE


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _crop(data: Path, entry: dict, dpi: int) -> np.ndarray:
    with pymupdf.open(data / entry["file"]) as doc:
        page = doc[entry["page"] - 1]
        x0, y0, x1, y1 = entry["bbox"]
        dpi = max(36, min(dpi, int(72 * _MAX_SIDE / max(x1 - x0, y1 - y0))))
        pix = page.get_pixmap(
            dpi=dpi, clip=pymupdf.Rect(x0, y0, x1, y1), colorspace=pymupdf.csRGB, alpha=False
        )
        return np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3).copy()


def sample(data: Path) -> dict:
    entries = json.loads(SAMPLE.read_text())
    figures.ocr_words(
        np.full((64, 64, 3), 255, np.uint8), FigureOcr.RAPIDOCR
    )  # load the model first
    engines = (FigureOcr.RAPIDOCR, FigureOcr.TESSERACT)
    totals = {e.value: Counter() for e in engines}
    rows = []
    photo_right = 0
    for entry in entries:
        image = _crop(data, entry, ParseConfig().figure_ocr_dpi)
        photo = figures.looks_like_photo(image)
        is_photo = entry["kind"] == "photo"
        photo_right += photo == is_photo
        row = {
            "file": Path(entry["file"]).name[:28],
            "page": entry["page"],
            "kind": entry["kind"],
            "px": f"{image.shape[1]}x{image.shape[0]}",
            "flat": round(figures.flat_share(image), 2),
            "photo": photo,
        }
        expected = Counter(tokens(entry["text"]))
        for engine in engines:
            start = time.perf_counter()
            text = figures.figure_text(figures.ocr_words(image, engine))
            seconds = time.perf_counter() - start
            got = Counter(tokens(text.removeprefix(figures.FIGURE_TEXT_HEADER)))
            matched = sum((expected & got).values())
            t = totals[engine.value]
            t["expected"] += sum(expected.values())
            t["read"] += sum(got.values())
            t["matched"] += matched
            t["crops"] += 1
            t["ms"] += round(1000 * seconds)
            if is_photo:
                t["photo_words"] += sum(got.values())
            row[engine.value] = {
                "recall": round(matched / max(1, sum(expected.values())), 3) if expected else None,
                "precision": round(matched / max(1, sum(got.values())), 3),
                "s": round(seconds, 2),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for engine, t in totals.items():
        text_crops = [r for r in rows if r["kind"] != "photo"]
        summary[engine] = {
            "word_recall": round(t["matched"] / max(1, t["expected"]), 3),
            "word_precision": round(t["matched"] / max(1, t["read"] - t["photo_words"]), 3),
            "macro_recall": round(float(np.mean([r[engine]["recall"] for r in text_crops])), 3),
            "s_per_crop_mean": round(t["ms"] / 1000 / max(1, t["crops"]), 2),
            "s_per_crop_median": round(float(np.median([r[engine]["s"] for r in rows])), 2),
            "words_read_on_photos": t["photo_words"],
        }
    summary["photo_test"] = {"right": photo_right, "crops": len(rows)}
    print(json.dumps(summary, indent=1), flush=True)
    return {"crops": rows, "summary": summary}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the parser workers
    and their Tesseract processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _rate(files: list[Path], config: ParseConfig) -> tuple[int, float, float]:
    """Pages, pages per second of wall time, CPU seconds per page."""
    with tempfile.TemporaryDirectory() as tmp:
        library = open_library(StorageConfig(library=Path(tmp)))
        cpu = _cpu_seconds()
        start = time.perf_counter()
        results = ingest(
            files,
            library,
            parse_config=config,
            chunk_config=ChunkConfig(),
            ingest_config=IngestConfig(workers=1, store_block_vectors=False),
            index=None,
        )
        elapsed = time.perf_counter() - start
        library.close()
    cpu = _cpu_seconds() - cpu  # NOTE: after close: the workers have exited and been reaped
    failed = [r.error for r in results if r.status != "added"]
    if failed:
        raise SystemExit(f"ingest failed: {failed}")
    pages = sum(r.pages for r in results)
    return pages, pages / elapsed, cpu / max(1, pages)


def _deck(data: Path, pages: int, folder: Path) -> list[Path]:
    """The deck's first `pages` pages as a scratch PDF (OCR'd pages cost seconds each)."""
    if not (data / DECK).exists():
        return []
    out = folder / f"deck-first-{pages}.pdf"
    with pymupdf.open(data / DECK) as deck, pymupdf.open() as part:
        part.insert_pdf(deck, to_page=pages - 1)
        part.save(out)
    return [out]


def speed(data: Path, repeats: int, deck_pages: int, scratch: Path) -> list[dict]:
    sets = {
        "born-digital": [data / n for n in BORN_DIGITAL if (data / n).exists()],
        "slide deck": _deck(data, deck_pages, scratch),
    }
    variants = {
        "off": ParseConfig(figure_ocr=FigureOcr.OFF, layout_detector=False),
        "rapidocr": ParseConfig(figure_ocr=FigureOcr.RAPIDOCR),
        "tesseract": ParseConfig(figure_ocr=FigureOcr.TESSERACT),
    }
    out = []
    for label, files in sets.items():
        if not files:
            continue
        runs = dict(variants)
        if label == "slide deck":
            runs["rapidocr, no layout detector"] = ParseConfig(
                figure_ocr=FigureOcr.RAPIDOCR, layout_detector=False
            )
            runs["off, layout detector"] = ParseConfig(
                figure_ocr=FigureOcr.OFF, layout_detector=True
            )
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        pages = 0
        for _ in range(repeats if label == "born-digital" else 1):
            # NOTE: alternate, so a changing load slows every variant alike
            for name, config in runs.items():
                pages, rate, cpu_page = _rate(files, config)
                best[name] = max(best.get(name, 0.0), rate)
                cpu[name] = min(cpu.get(name, float("inf")), cpu_page)
                line = {"set": label, "variant": name, "pages_per_s": round(rate, 2)}
                print(json.dumps({**line, "cpu_s_per_page": round(cpu_page, 3)}), flush=True)
        for name, rate in best.items():
            row = {
                "set": label,
                "files": len(files),
                "pages": pages,
                "variant": name,
                "best_pages_per_s": round(rate, 2),
                "vs_off": round(rate / best["off"], 2),
                "least_cpu_s_per_page": round(cpu[name], 3),
                "cpu_pages_per_s_vs_off": round(cpu["off"] / cpu[name], 2),
            }
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def slides(data: Path) -> dict:
    """The slide rule on every page without a text layer: the dev documents' decks and brochures
    against the robustness scans (plain scans by construction)."""
    files = sorted((data / "mmlongbench" / "dev" / "documents").glob("*.pdf"))
    files += [data / n for n in SCANNED if "robustness" in n and (data / n).exists()]
    files.append(data / "pdfs" / "robustness" / "pdfplumber__issue-203-decimalize_scanned.pdf")
    out = {}
    for path in files:
        if not path.exists():
            continue
        counts = Counter()
        with pymupdf.open(path) as doc:
            for page in doc:
                if len(page.get_text().strip()) >= ParseConfig().min_text_chars:
                    continue
                pix = page.get_pixmap(dpi=24, colorspace=pymupdf.csRGB, alpha=False)
                image = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)
                landscape = page.rect.width > 1.1 * page.rect.height
                counts["pages"] += 1
                counts["slide_like"] += figures.is_slide_like(
                    image, page.rect.width, page.rect.height
                )
                counts["landscape"] += landscape
                counts["coloured"] += (
                    figures.saturated_share(image) >= figures.SLIDE_SATURATED_SHARE
                )
        if counts:
            out[path.name] = dict(counts)
            print(path.name, dict(counts), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--sample", action="store_true", help="score both engines on the labelled crops"
    )
    parser.add_argument(
        "--speed", action="store_true", help="ingest pages/s with each engine and off"
    )
    parser.add_argument(
        "--slides", action="store_true", help="how the slide rule sorts image-only pages"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="born-digital rounds (the deck: one)"
    )
    parser.add_argument("--deck-pages", type=int, default=12, help="pages of the slide deck timed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "figure_ocr.json")
    args = parser.parse_args()
    report: dict = {}
    if args.sample:
        report["sample"] = sample(args.data)
    if args.slides:
        report["slides"] = slides(args.data)
    if args.speed:
        with tempfile.TemporaryDirectory() as scratch:
            report["speed"] = speed(args.data, args.repeats, args.deck_pages, Path(scratch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
