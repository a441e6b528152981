"""Memory: peak RSS of ingesting the 619-page robustness PDF with the default settings.

Usage:
    python -m bench.memory [--pdf PATH] [--json bench-work/memory.json]

What is measured, and the stated bound, are `app.reliability.memory`'s (shared with
tests/reliability/test_memory.py). The PDF is in ../shared/data (FOLIO_SHARED_DATA overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from app.reliability.memory import BOUNDS_MB, run, within_bounds

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FOLIO_SHARED_DATA", ROOT.parent / "shared" / "data"))
PDF = SHARED_DATA / "pdfs" / "robustness" / "unstructured__DA-619p.pdf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pdf", type=Path, default=PDF)
    parser.add_argument("--json", type=Path, default=None, help="Write the report here.")
    args = parser.parse_args()
    report = run(args.pdf)
    report["bounds_mb"] = BOUNDS_MB
    report["over_bounds"] = within_bounds(report)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(1 if report["over_bounds"] else 0)


if __name__ == "__main__":
    main()
