"""Worker processes start from `python -m pipeline.ingestion.worker`: what that start guarantees.

Runs of README's example from each kind of `__main__` are in tests/app/test_python_main.py.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from isolation_faults import faulty_task

from pipeline.ingestion.isolation import TaskStatus, WorkerPool


def _workers() -> list[psutil.Process]:
    """This process's worker children, zombies included."""
    found = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE or "pipeline.ingestion.worker" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:  # exited meanwhile
            pass
    return found


def test_a_worker_ignores_ctrl_c_and_none_is_left_after_close() -> None:
    """Ctrl-C reaches the whole process group; the supervisor decides, the task carries on."""

    def interrupt_workers(_event: object) -> None:
        for worker in _workers():
            os.kill(worker.pid, signal.SIGINT)

    with WorkerPool(faulty_task, workers=1, timeout_s=3, memory_mb=256, on_event=interrupt_workers) as pool:
        (hung,) = pool.run([("hang", ("hang",))])  # interrupted while it runs, killed at its deadline
        (ok,) = pool.run([("ok", ("ok", 3))])
    assert (hung.status, hung.detail) == (TaskStatus.TIMEOUT, "over 3 s")  # not a crash
    assert (ok.status, ok.value) == (TaskStatus.OK, 9)
    assert _workers() == []  # stopped and reaped: no zombie


def test_a_worker_that_cannot_start_says_why() -> None:
    pool = WorkerPool(faulty_task, initializer=os.chdir, initargs=("/no/such/folio/folder",))
    with pool, pytest.raises(RuntimeError, match="worker processes cannot start .*FileNotFoundError"):
        list(pool.run([("x", ("ok", 1))]))
    assert _workers() == []


def test_a_task_defined_in_main_is_refused_up_front() -> None:
    def task() -> None: ...

    task.__module__ = "__main__"
    with pytest.raises(ValueError, match="task is defined in __main__"):
        WorkerPool(task)
