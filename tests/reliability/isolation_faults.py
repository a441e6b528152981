"""Fault injection for the isolation tests and the fuzzer's self-check.

Top-level task functions (spawn workers import them by name). Heavy modules are imported inside
the functions, so workers of the pool-level tests start in a fraction of a second.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from pipeline.ingestion.isolation import emit

# Without a working memory limit, `allocate_forever` stops here instead of exhausting the machine;
# bytearray memory is reserved, not touched, so even this much never becomes resident.
_HOG_CAP_BYTES = 256 << 30


def segfault() -> None:
    ctypes.string_at(0)  # a real SIGSEGV, as from a bug in C code


def allocate_forever() -> str:
    blocks = []
    while sum(len(b) for b in blocks) < _HOG_CAP_BYTES:
        blocks.append(bytearray(64 << 20))
    return "allocated 256 GB: no memory limit"


def faulty_task(kind: str, value: int = 0) -> int:
    """A pool task: return value * value, or fail in the way `kind` names, after one event."""
    emit(("started", kind, value))
    if kind == "segfault":
        segfault()
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        while True:
            time.sleep(1)
    elif kind == "hog":
        return allocate_forever()  # type: ignore[return-value]
    elif kind == "raise":
        raise ValueError("bad value\nsecond line")
    elif kind == "exit":
        os._exit(3)
    return value * value


def parse_or_fault(path: str, *args):  # noqa: ANN002, ANN201 - the signature of ingest.parse_in_worker
    """ingest's parse task, except for files whose name starts with a fault: segfault, abort, hang, hog."""
    from pipeline.ingestion import ingest

    kind = Path(path).name.split("-")[0]
    if kind == "segfault":
        segfault()
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        while True:
            time.sleep(1)
    elif kind == "hog":
        allocate_forever()
    return ingest.parse_in_worker(path, *args)
