"""Fault injection for the Ray tests: a parse task that fails the way a file's name says.

Imported by name in Ray workers and in their parser processes (the tests put this folder on
the workers' PYTHONPATH), so it stays a top-level module with top-level functions.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path


def parse_or_fault(path: str, *args):  # noqa: ANN002, ANN201 - the signature of ingest.parse_in_worker
    """ingest's parse task, except for files named `segfault-*` (the parser process crashes)
    and `killworker-*` (the Ray worker that runs the parser process is killed)."""
    from pipeline.ingestion import ingest

    kind = Path(path).name.split("-")[0]
    if kind == "segfault":
        ctypes.string_at(0)  # a real SIGSEGV, as from a bug in C code
    elif kind == "killworker":
        os.kill(os.getppid(), signal.SIGKILL)  # the parent of a parser process is its Ray actor
        time.sleep(60)
    return ingest.parse_in_worker(path, *args)
