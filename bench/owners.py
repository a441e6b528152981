"""Search latency in a library with accounts: the per-user chunk filter read once per index state
(what `LibraryIndex.search` does) against read on every query (what it did before).

    HF_HUB_OFFLINE=1 python -m bench.owners --library LIB --queries 40

LIB is copied to a temporary folder and an account is added there (a library with accounts
filters every search by owner); LIB itself is not touched. Both ways run in one process on the
same queries, alternating per query, after one warm-up search.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.research.common import command_line

QUERIES = (
    "revenue growth compared with the previous year",
    "percentage of respondents who agree",
    "how many figures are in the paper",
    "total assets at the end of the fiscal year",
    "main conclusion of the study",
    "which model performs best on the benchmark",
    "number of employees",
    "what does the chart on this page show",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from app import Folio
    from pipeline.library.owners import add_user, owned_chunk_ids

    with tempfile.TemporaryDirectory() as work:
        copy = Path(work) / "lib"
        shutil.copytree(args.library, copy)
        folio = Folio(library=copy)
        add_user(folio.library, "bench", "bench-password")
        folio.search(QUERIES[0], k=args.k)
        times: dict[str, list[float]] = {"cached": [], "per_query": []}
        for i in range(args.queries):
            for way in ("cached", "per_query") if i % 2 == 0 else ("per_query", "cached"):
                t0 = time.perf_counter()
                if way == "per_query":  # what every query paid before the cache: a fresh read
                    owned_chunk_ids(folio.library, None)
                folio.search(QUERIES[i % len(QUERIES)], k=args.k)
                times[way].append((time.perf_counter() - t0) * 1000)
        reads = []
        for _ in range(10):
            t0 = time.perf_counter()
            chunks = owned_chunk_ids(folio.library, None)
            reads.append((time.perf_counter() - t0) * 1000)
        folio.close()
    report = {
        "command": command_line("bench.owners", args, skip={"json", "library"}),
        "chunks": len(chunks or ()),
        "owned_chunk_ids_ms_p50": round(statistics.median(reads), 1),
        **{
            f"search_{way}_ms": {
                "p50": round(statistics.median(ms), 1),
                "p95": round(statistics.quantiles(ms, n=20)[-1], 1),
            }
            for way, ms in times.items()
        },
    }
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
