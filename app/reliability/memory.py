"""Memory: peak RSS of ingesting a PDF through the Python API with the default settings.

The harness that `python -m bench.memory` (the 619-page robustness PDF, RELIABILITY.md) and
tests/reliability/test_memory.py share; `python -m app.reliability.memory PDF` is the measuring
process it starts.

The ingest runs through `Folio.ingest` (default settings: hybrid index with the MiniLM dense
model, OCR auto, two parser workers of which one document uses one) into a fresh temporary
library, in a child process of its own so that nothing else is in its memory. There:

- `getrusage(RUSAGE_SELF).ru_maxrss` is the main process's exact peak (parsing results,
  storing, chunking, embedding, index save);
- `getrusage(RUSAGE_CHILDREN).ru_maxrss` is the exact peak of the largest parser worker (and any
  other child, all waited for when the pool shuts down);
- a thread samples the process tree every 50 ms with psutil: per-process RSS and virtual size
  (VMS: what an RLIMIT_AS on the workers counts), and the peak of main + workers together.

`BOUNDS_MB` is the stated bound (measured peak plus a margin); the slow test
tests/reliability/test_memory.py asserts it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The stated bound, in MiB: the peaks measured by `python -m bench.memory` (2-core machine,
# default settings: main 1452, largest parser worker 405, both together 1870) plus a margin.
BOUNDS_MB = {"main_rss": 2048, "worker_rss": 768, "total_rss": 2560}

_MB = 1024 * 1024


class _Sampler(threading.Thread):
    """Peak RSS and VMS of this process and of each descendant, and of their sum."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self._me = psutil.Process()
        self._interval = interval
        self._halt = threading.Event()
        self.main_rss = self.main_vms = self.total_rss = 0
        self.workers: dict[int, dict[str, float]] = {}

    def run(self) -> None:
        import psutil

        while not self._halt.is_set():
            try:
                info = self._me.memory_info()
                total = info.rss
                self.main_rss = max(self.main_rss, info.rss)
                self.main_vms = max(self.main_vms, info.vms)
                for child in self._me.children(recursive=True):
                    try:
                        c = child.memory_info()
                        name = " ".join(child.cmdline()[-2:])[:80]
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    row = self.workers.setdefault(child.pid, {"rss": 0, "vms": 0, "cmd": name})
                    row["rss"] = max(row["rss"], c.rss)
                    row["vms"] = max(row["vms"], c.vms)
                    total += c.rss
                self.total_rss = max(self.total_rss, total)
            except psutil.NoSuchProcess:
                pass
            self._halt.wait(self._interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(pdf: Path) -> dict:
    """Ingest `pdf` into a fresh library here (call in a fresh process) and report the peaks."""
    from app import Folio

    sampler = _Sampler()
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="folio-memory-") as tmp:
        t0 = time.perf_counter()
        with Folio(library=Path(tmp) / "lib") as folio:
            (result,) = folio.ingest([pdf])
            ingest_s = time.perf_counter() - t0
            chunks = sum(d.chunks for d in folio.documents())
        wall = time.perf_counter() - t0
    sampler.stop()
    workers = sorted(sampler.workers.values(), key=lambda w: -w["rss"])
    return {
        "pdf": pdf.name,
        "status": result.status,
        "error": result.error,
        "pages": result.pages,
        "chunks": chunks,
        "ingest_s": round(ingest_s, 1),
        "wall_s": round(wall, 1),
        "pages_per_s": round(result.pages / ingest_s, 2) if ingest_s else None,
        # ru_maxrss is in KiB on Linux
        "main_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "sampled": {
            "main_rss_mb": round(sampler.main_rss / _MB, 1),
            "main_vms_mb": round(sampler.main_vms / _MB, 1),
            "total_rss_mb": round(sampler.total_rss / _MB, 1),
            "children": [
                {"cmd": w["cmd"], "rss_mb": round(w["rss"] / _MB, 1), "vms_mb": round(w["vms"] / _MB, 1)}
                for w in workers
            ],
        },
    }


def run(pdf: Path, env: dict[str, str] | None = None) -> dict:
    """`measure` in a fresh Python process (so the peaks are the ingest's alone)."""
    if not pdf.is_file():
        raise FileNotFoundError(f"{pdf}: not found (set FOLIO_SHARED_DATA)")
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    out = subprocess.run(
        [sys.executable, "-m", "app.reliability.memory", str(pdf)],
        capture_output=True, text=True, env=child_env, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"the measuring process failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def within_bounds(report: dict, bounds: dict[str, float] = BOUNDS_MB) -> list[str]:
    """The bounds a report breaks (empty: none)."""
    measured = {
        "main_rss": report["main_peak_rss_mb"],
        "worker_rss": report["children_peak_rss_mb"],
        "total_rss": report["sampled"]["total_rss_mb"],
    }
    return [f"{k}: {measured[k]} MB > {bounds[k]} MB" for k in bounds if measured[k] > bounds[k]]


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]))))
