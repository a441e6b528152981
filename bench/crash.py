"""Crash safety: SIGKILL `folio ingest` 20 times at random moments, check the library after
each kill, then finish the ingest and compare the library with one that was never killed.

Usage:
    python -m bench.crash --kills 20 --seed 0 --json bench-work/crash.json
    python -m bench.crash --kills 3 --seed 0 --bm25-only --files papers/unstructured__multi-column_DPR.pdf

The rounds, the checks and the report are `app.reliability.crash`'s (shared with
tests/reliability/test_crash.py). The PDFs are links to ../shared/data/pdfs (FOLIO_SHARED_DATA
overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from app.reliability.crash import DEFAULT_FILES, Round, run

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FOLIO_SHARED_DATA", ROOT.parent / "shared" / "data"))
WORK = Path(os.environ.get("FOLIO_BENCH_DIR", ROOT / "bench-work")) / "crash"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="The shared data folder.")
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES), help="PDFs under the shared pdfs folder.")
    parser.add_argument("--bm25-only", action="store_true", help="No dense index (no embedding model).")
    parser.add_argument("--complete-every", type=float, default=0.25, help="Chance of a run to completion after a kill.")
    parser.add_argument("--check-in-process", action="store_true", help="Check through Folio.check, not `folio check`.")
    parser.add_argument("--work", type=Path, default=None, help=f"Keep libraries and logs here (default: a temp folder; e.g. {WORK}).")
    parser.add_argument("--json", type=Path, default=None, help="Write the report here.")
    args = parser.parse_args()

    def show(r: Round) -> None:
        verdict = "ok" if r.check_rc == 0 and not r.errors else f"FAILED {r.errors}"
        done = "" if r.completed is None else f", completed: {r.completed}"
        print(
            f"round {r.number:2d} {r.kind:7s} kill at {r.delay_s:6.1f}s  {r.phase:22s} "
            f"orphans {r.orphans}  check {verdict} ({len(r.leftovers)} leftovers, {r.check_s}s){done}",
            flush=True,
        )

    report = run(
        args.kills, args.seed, data_dir=args.data, files=args.files, bm25_only=args.bm25_only, work=args.work,
        complete_every=args.complete_every, in_process_check=args.check_in_process, on_round=show,
    )  # fmt: skip
    summary = {k: v for k, v in report.items() if k != "rounds"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["checks_passed"] == report["checks"] and report["final_matches_clean_run"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
