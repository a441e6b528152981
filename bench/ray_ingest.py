"""Ingestion on Ray against the single-process path: the same PDFs, in one run (issue 10).

Usage:
    python -m bench.ray_ingest [--data ../shared/data] [--local-workers 1] [--ray-workers 1 2]
                               [--ray-cpus 2] [--out bench-work/ray_ingest.json]

Each configuration ingests the same born-digital PDFs (the set of bench/ingest.py, 181 pages)
into a fresh temporary library with the shipped index (BM25 + MiniLM dense): the local path
(`pipeline.ingestion.ingest.ingest`, parser processes, embedding in the main process), then Ray with N
ingest actors on a local Ray of `--ray-cpus` CPUs (started before the clock; its start is
reported apart). Reported per configuration: wall time, pages/s, chunks/s, the peak memory of
the whole process tree, and for Ray the per-worker rates of its two stages, from the workers'
own timings: parsing (pages/s, OCR included, in the worker's parser process) and embedding
(chunks/s: chunking, BM25 analysis and MiniLM on one torch thread per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

from bench.ingest import BORN_DIGITAL
from models.config import EncoderConfig
from pipeline.config import ChunkConfig, IngestConfig, ParseConfig, RayConfig
from pipeline.ingestion.distributed import WorkerTiming, ingest_on_ray
from pipeline.ingestion.ingest import IngestResult, ingest
from pipeline.library.search import LibraryIndex
from retrieval.config import RetrievalConfig
from storage import StorageConfig, open_library

ROOT = Path(__file__).resolve().parents[1]


class _PeakMemory:
    """Peak summed RSS of this process and all its descendants, sampled every 0.2 s.

    Shared pages (libraries, Ray's object store) count once per process, so this is an upper
    bound of what the tree holds.
    """

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(0.2)


class _TimedIndex:
    """The library index, timing what the main process spends encoding and adding chunks."""

    def __init__(self, index: LibraryIndex) -> None:
        self.index = index
        self.seconds = 0.0
        self.chunks = 0

    def add(self, chunks) -> None:  # noqa: ANN001 - ChunkIndex protocol
        start = time.perf_counter()
        self.index.add(chunks)
        self.seconds += time.perf_counter() - start
        self.chunks += len(chunks)

    def remove(self, chunk_ids) -> None:  # noqa: ANN001
        self.index.remove(chunk_ids)

    def flush(self) -> None:
        self.index.flush()


def _library(tmp: str) -> tuple:
    library = open_library(StorageConfig(library=Path(tmp)))
    index = LibraryIndex(library, RetrievalConfig(), EncoderConfig())
    index.retriever  # noqa: B018 - the driver's encoders load before the clock starts
    return library, index


def _totals(results: list[IngestResult], seconds: float) -> dict:
    failed = [r.error for r in results if r.status != "added"]
    if failed:
        raise SystemExit(f"ingest failed: {failed}")
    pages, chunks = sum(r.pages for r in results), sum(r.chunks for r in results)
    return {
        "pages": pages,
        "chunks": chunks,
        "wall_s": round(seconds, 1),
        "pages_per_s": round(pages / seconds, 2),
        "chunks_per_s": round(chunks / seconds, 1),
    }


def run_local(files: list[Path], workers: int) -> dict:
    """The path without Ray: parser processes, then embedding and storing in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        library, index = _library(tmp)
        timed = _TimedIndex(index)
        with _PeakMemory() as memory:
            start = time.perf_counter()
            results = ingest(
                files, library, parse_config=ParseConfig(), chunk_config=ChunkConfig(),
                ingest_config=IngestConfig(workers=workers), index=timed,
            )  # fmt: skip
            seconds = time.perf_counter() - start
        library.close()
    row = {"config": f"local, {workers} parser process{'es' if workers > 1 else ''}", **_totals(results, seconds)}
    row["embed_in_main_s"] = round(timed.seconds, 1)
    row["embed_chunks_per_s"] = round(timed.chunks / timed.seconds, 1) if timed.seconds else None
    row["peak_tree_rss_mb"] = round(memory.peak_mb)
    return row


def run_ray(files: list[Path], workers: int, cpus: int) -> dict:
    """Ray with `workers` ingest actors (1 CPU each) on a fresh local Ray of `cpus` CPUs."""
    import ray

    with tempfile.TemporaryDirectory() as tmp, _PeakMemory() as memory:
        library, index = _library(tmp)
        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        init_s = time.perf_counter() - start
        timings: list[WorkerTiming] = []
        try:
            start = time.perf_counter()
            results = ingest_on_ray(
                files, library, parse_config=ParseConfig(), chunk_config=ChunkConfig(),
                ingest_config=IngestConfig(), retrieval_config=RetrievalConfig(),
                encoder_config=EncoderConfig(), ray_config=RayConfig(ingest_workers=workers),
                index=index, on_timing=timings.append,
            )  # fmt: skip
            seconds = time.perf_counter() - start
        finally:
            ray.shutdown()
        library.close()
    row = {"config": f"Ray, {workers} worker{'s' if workers > 1 else ''}", **_totals(results, seconds)}
    row["ray_init_s"] = round(init_s, 1)
    row["peak_tree_rss_mb"] = round(memory.peak_mb)
    row["workers"] = _per_worker(timings)
    busy = sum(t.parse_s + t.embed_s for t in timings)
    # What the wall time holds besides the workers' own work: actor start (model loads, parser
    # processes), moving PDFs and results, storing and indexing here, and waiting.
    row["worker_busy_s"] = round(busy, 1)
    return row


def _per_worker(timings: list[WorkerTiming]) -> list[dict]:
    sums: dict[str, dict] = defaultdict(lambda: {"docs": 0, "pages": 0, "chunks": 0, "parse_s": 0.0, "embed_s": 0.0})
    for t in timings:
        s = sums[t.worker]
        s["docs"] += 1
        s["pages"] += t.pages
        s["chunks"] += t.chunks
        s["parse_s"] += t.parse_s
        s["embed_s"] += t.embed_s
    return [
        {
            "worker": name,
            **{k: v if isinstance(v, int) else round(v, 1) for k, v in s.items()},
            "parse_pages_per_s": round(s["pages"] / s["parse_s"], 2),
            "embed_chunks_per_s": round(s["chunks"] / s["embed_s"], 1),
        }
        for name, s in sorted(sums.items())
    ]


def _table(rows: list[dict]) -> str:
    lines = [
        "| configuration | pages | chunks | wall s | pages/s | chunks/s | Ray start s | peak RSS of the process tree, MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['pages']} | {r['chunks']} | {r['wall_s']} | {r['pages_per_s']} | "
            f"{r['chunks_per_s']} | {r.get('ray_init_s', '-')} | {r['peak_tree_rss_mb']} |"
        )
    lines += [
        "",
        "| configuration | worker | documents | pages | parse s | parse pages/s | chunks | embed s | embed chunks/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for i, w in enumerate(r.get("workers", []), 1):
            lines.append(
                f"| {r['config']} | {i} | {w['docs']} | {w['pages']} | {w['parse_s']} | {w['parse_pages_per_s']} | "
                f"{w['chunks']} | {w['embed_s']} | {w['embed_chunks_per_s']} |"
            )
        if "embed_chunks_per_s" in r and r["embed_chunks_per_s"]:
            lines.append(
                f"| {r['config']} | main process (2 torch threads) | - | - | - | - | {r['chunks']} | "
                f"{r['embed_in_main_s']} | {r['embed_chunks_per_s']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--local-workers", type=int, nargs="*", default=[1])
    parser.add_argument("--ray-workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-work" / "ray_ingest.json")
    args = parser.parse_args()

    files = [args.data / n for n in BORN_DIGITAL]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"missing PDFs (set --data): {missing}")
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": os.getloadavg()},
        "files": [f.name for f in files],
        "rows": [],
    }
    for workers in args.local_workers:
        report["rows"].append(run_local(files, workers))
        print(json.dumps(report["rows"][-1]), flush=True)
    for workers in args.ray_workers:
        report["rows"].append(run_ray(files, workers, args.ray_cpus))
        print(json.dumps(report["rows"][-1]), flush=True)
    report["machine"]["load_after"] = os.getloadavg()
    print(_table(report["rows"]))
    print(f"load average before {report['machine']['load_before']}, after {report['machine']['load_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
