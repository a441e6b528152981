"""Fuzz the parser: 10,000 mutated real PDFs through the isolated parse path that ingestion uses.

Usage:
    python -m bench.fuzz --cases 10000 --seed 0 --out bench-work/fuzz.json
    python -m bench.fuzz --seed 0 --case 4242 --keep bench-work/fuzz-cases  # write one case's file

The cases, the strategies and what counts as a problem are `pipeline.reliability.fuzz`'s (shared
with tests/reliability/test_fuzz.py). Seeds are the PDFs in ../shared/data/pdfs (papers and
robustness; FOLIO_SHARED_DATA overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.reliability.fuzz import make_case, prepare_seeds, run

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FOLIO_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = Path(os.environ.get("FOLIO_BENCH_DIR", ROOT / "bench-work")) / "fuzz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="Number of the first case (resume or shard).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="Parse deadline per case.")
    parser.add_argument("--memory-mb", type=int, default=None, help="Memory limit (default: ingest's).")
    parser.add_argument("--ocr-fraction", type=float, default=0.01, help="Share of cases parsed with OCR on.")
    parser.add_argument("--seed-pages", type=int, default=2, help="Cut seed PDFs to this many pages.")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=WORK.parent / "fuzz.json")
    parser.add_argument("--case", type=int, default=None, help="Only write this case's file (see --keep).")
    parser.add_argument("--keep", type=Path, default=WORK / "cases", help="Folder for --case.")
    args = parser.parse_args(argv)
    if args.case is not None:
        case = make_case(args.case, args.seed, prepare_seeds(args.data, pages=args.seed_pages), args.ocr_fraction)
        args.keep.mkdir(parents=True, exist_ok=True)
        (args.keep / case.file_name).write_bytes(case.data)
        print(f"{args.keep / case.file_name}: {case.strategy} of {case.seed} ({case.variant}), ocr={case.ocr}")
        return 0
    report = run(
        args.cases, args.seed, first=args.first, workers=args.workers, timeout_s=args.timeout_s,
        memory_mb=args.memory_mb, ocr_fraction=args.ocr_fraction, data_dir=args.data,
        seed_pages=args.seed_pages, work=WORK, log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    total = report["total"]
    print(json.dumps({"wall_s": report["wall_s"], **total}, indent=None))
    return 1 if total["main_problems"] or total["bad_reasons"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
