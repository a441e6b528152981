"""Shared fixtures. TRITON_INTERPRET must be set before anything imports `kernels`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FOLIO_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set FOLIO_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, or skip with the reason when it is absent."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def papers_dir(shared_data: Path) -> Path:
    return _need(shared_data / "pdfs" / "papers")


@pytest.fixture(scope="session")
def robustness_dir(shared_data: Path) -> Path:
    return _need(shared_data / "pdfs" / "robustness")


@pytest.fixture(scope="session")
def mmlb_dir(shared_data: Path) -> Path:
    return _need(shared_data / "mmlongbench" / "dev")


@pytest.fixture(scope="session")
def ir_dir(shared_data: Path) -> Path:
    return _need(shared_data / "ir")
