"""Memory: ingesting the 619-page robustness PDF with the default settings stays under the
stated bound (app/reliability/memory.py: peak RSS of the main process, of the largest parser
worker, and of both together)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.reliability.memory import BOUNDS_MB, run, within_bounds


@pytest.mark.slow
def test_the_619_page_pdf_ingests_within_the_memory_bound(robustness_dir: Path) -> None:
    report = run(robustness_dir / "unstructured__DA-619p.pdf")
    assert report["status"] == "added" and report["pages"] == 619, report
    assert report["chunks"] > 0
    assert not within_bounds(report, BOUNDS_MB), report
