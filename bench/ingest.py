"""Ingestion throughput: Folio's full pipeline against raw PyMuPDF text extraction, same files.

Usage:
    python bench/ingest.py [--data ../shared/data] [--workers 1 2] [--index none bm25 hybrid] [--layout] [--out bench/results/ingest.json]
        [--encoder-runtime torch openvino] [--block-vectors on off] [--figure-ocr off rapidocr]

Reports pages/s for born-digital and OCR pages separately, with raw `page.get_text()` over the
same pages measured in the same run, and the peak memory of the main and worker processes.
`--layout` also runs the layout-model parser on the dev papers and compares what each parser finds.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import pymupdf

from models.config import EncoderConfig, EncoderRuntime
from pipeline.config import ChunkConfig, IngestConfig, ParseConfig, ParserKind
from pipeline.ingestion.ingest import ingest
from pipeline.ingestion.parse import parse_pdf
from pipeline.library.search import LibraryIndex
from retrieval.config import FusionConfig, RetrievalConfig
from storage import StorageConfig, open_library

ROOT = Path(__file__).resolve().parents[1]

BORN_DIGITAL = [
    "pdfs/papers/papermage__2023.eacl-main.121.pdf",
    "pdfs/papers/papermage__papermage.pdf",
    "pdfs/papers/paperqa__pasa.pdf",
    "pdfs/papers/unstructured__multi-column_DPR.pdf",
    "mmlongbench/dev/documents/NETFLIX_2015_10K.pdf",
    "mmlongbench/dev/documents/PIP_Seniors-and-Tech-Use_040314.pdf",
    "mmlongbench/dev/documents/2312.10997v5.pdf",
]
SCANNED = [
    "pdfs/robustness/pymupdf__test_3863_imageonly_8pp.pdf",
    "pdfs/robustness/docling__ocr_test_rotated_90.pdf",
    "mmlongbench/dev/documents/germanwingsdigitalcrisisanalysis-150403064828-conversion-gate01_95.pdf",
]


def _raw_rate(files: list[Path]) -> tuple[int, float]:
    start = time.perf_counter()
    pages = 0
    for path in files:
        with pymupdf.open(path) as doc:
            for page in doc:
                page.get_text()
                pages += 1
    return pages, pages / (time.perf_counter() - start)


def _index(library, kind: str, runtime: EncoderRuntime) -> LibraryIndex | None:
    if kind == "none":
        return None
    retrieval = RetrievalConfig()
    if kind == "bm25":
        retrieval = RetrievalConfig(
            mode="bm25", fusion=FusionConfig(dense_weight=0, splade_weight=0)
        )
    index = LibraryIndex(library, retrieval, EncoderConfig(runtime=runtime))
    index.retriever  # noqa: B018 - load the encoders before the clock starts
    return index


def _folio_rate(
    files: list[Path],
    workers: int,
    index_kind: str,
    runtime: EncoderRuntime,
    block_vectors: bool = True,
    figure_ocr: str | None = None,
) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        library = open_library(StorageConfig(library=Path(tmp)))
        index = _index(library, index_kind, runtime)
        start = time.perf_counter()
        results = ingest(
            files,
            library,
            parse_config=ParseConfig()
            if figure_ocr is None
            else ParseConfig(figure_ocr=figure_ocr),
            chunk_config=ChunkConfig(),
            ingest_config=IngestConfig(workers=workers, store_block_vectors=block_vectors),
            index=index,
        )
        elapsed = time.perf_counter() - start
        library.close()
    failed = [r.error for r in results if r.status != "added"]
    if failed:
        raise SystemExit(f"ingest failed: {failed}")
    pages = sum(r.pages for r in results)
    return pages, pages / elapsed


def _parser_census(files: list[Path], parser: ParserKind) -> dict:
    start = time.perf_counter()
    counts = {
        "pages": 0,
        "headings": 0,
        "figures": 0,
        "tables": 0,
        "captions": 0,
        "captions_linked": 0,
    }
    for path in files:
        doc = parse_pdf(path, ParseConfig(parser=parser))
        for page in doc.pages:
            counts["pages"] += 1
            for b in page.blocks:
                counts["headings"] += b.kind == "heading"
                counts["figures"] += b.kind == "figure"
                counts["tables"] += b.kind == "table"
                counts["captions"] += b.kind == "caption"
                counts["captions_linked"] += b.kind == "caption" and b.caption_of is not None
    counts["pages_per_s"] = round(counts["pages"] / (time.perf_counter() - start), 2)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--layout", action="store_true", help="also compare the layout-model parser"
    )
    parser.add_argument(
        "--sets",
        nargs="*",
        default=["born-digital", "ocr"],
        choices=["born-digital", "ocr"],
        help="which file sets to time (none: only --layout)",
    )
    parser.add_argument(
        "--index",
        nargs="+",
        default=["none"],
        choices=["none", "bm25", "hybrid"],
        help="index built while ingesting: none (parse, chunk, store), bm25, or hybrid "
        "(the default BM25 + SPLADE + dense)",
    )
    parser.add_argument(
        "--encoder-runtime",
        nargs="+",
        type=EncoderRuntime,
        default=[EncoderRuntime.AUTO],
        choices=list(EncoderRuntime),
        help="runtime of the text encoders (EncoderConfig.runtime); several are timed in turn",
    )
    parser.add_argument(
        "--block-vectors",
        nargs="+",
        default=["on"],
        choices=["on", "off"],
        help="store the sampler's block vectors at ingest (IngestConfig.store_block_vectors; "
        "only with a dense index); several are timed in turn",
    )
    parser.add_argument(
        "--figure-ocr",
        nargs="+",
        default=[None],
        choices=["rapidocr", "tesseract", "off"],
        help="ParseConfig.figure_ocr (default: the configured one); several are timed in turn",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    args = parser.parse_args()

    report: dict = {"runs": []}
    for label, names in (("born-digital", BORN_DIGITAL), ("ocr", SCANNED)):
        if label not in args.sets:
            continue
        files = [args.data / n for n in names if (args.data / n).exists()]
        raw_pages, raw_rate = _raw_rate(files)
        runs = [
            (w, i, r, b, f)
            for i in args.index
            for w in args.workers
            for r in args.encoder_runtime
            for b in args.block_vectors
            for f in args.figure_ocr
        ]
        for workers, index_kind, runtime, block_vectors, figure_ocr in runs:
            pages, rate = _folio_rate(
                files, workers, index_kind, runtime, block_vectors == "on", figure_ocr
            )
            row = {
                "set": label,
                "files": len(files),
                "pages": pages,
                "workers": workers,
                "index": index_kind,
                "encoder_runtime": runtime.value,
                "block_vectors": block_vectors,
                "figure_ocr": figure_ocr or ParseConfig().figure_ocr,
                "folio_pages_per_s": round(rate, 2),
                "raw_get_text_pages_per_s": round(raw_rate, 1),
                "raw_over_folio": round(raw_rate / rate, 1),
            }
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
    # ru_maxrss is in KiB on Linux.
    report["peak_rss_mb"] = {
        "main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }
    print(json.dumps(report["peak_rss_mb"]))
    if args.layout:
        papers = sorted((args.data / "pdfs" / "papers").glob("*.pdf"))
        report["parsers"] = {kind.value: _parser_census(papers, kind) for kind in ParserKind}
        print(json.dumps(report["parsers"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
