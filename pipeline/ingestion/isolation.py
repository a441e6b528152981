"""Run a function in supervised worker processes, with a deadline and a memory limit per task.

A task that crashes its worker (a segfault in C code), hangs, or runs out of memory costs only
that worker: it is killed and replaced, the outcome says what happened, and the other workers and
the calling process carry on. Used by ingestion to parse PDFs (MuPDF is C code fed untrusted files).

    with WorkerPool(parse_one, workers=2, timeout_s=600, memory_mb=2048) as pool:
        for outcome in pool.run([(key, (path,)) for key, path in todo]):
            ...  # outcome.status: "ok" (outcome.value), "error", "timeout", "memory" or "crash"

`fn` must be a top-level (picklable) function; a task calls `emit(payload)` to send progress
events, which the pool hands to `on_event` in this process.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

# A worker that cannot even report its MemoryError exits with this status.
_EXIT_OUT_OF_MEMORY = 86
_POLL_S = 0.5  # how often the supervisor wakes without any message (stop requests, deadlines)


class TaskStatus(enum.StrEnum):
    OK = "ok"  # fn returned; the value is in TaskOutcome.value
    ERROR = "error"  # fn raised; the exception is in TaskOutcome.detail
    TIMEOUT = "timeout"  # the deadline passed; the worker was killed
    MEMORY = "memory"  # the task ran out of its address space (MemoryError in the worker)
    CRASH = "crash"  # the worker died (a signal or an exit status is in TaskOutcome.detail)


@dataclass(frozen=True)
class TaskOutcome:
    key: Hashable
    status: TaskStatus
    value: Any = None
    detail: str = ""  # "SIGSEGV", "exit status 1", "ValueError: ...": one line
    seconds: float = 0.0


# ----------------------------------------------------------------------------- worker side

_conn: Connection | None = None  # this worker's pipe to the supervisor (None outside a worker)


def emit(payload: Any) -> None:
    """Send a progress event from inside a task to the pool's `on_event` (no-op outside a pool)."""
    if _conn is not None:
        _conn.send(("event", payload))


def address_space_bytes() -> int:
    """This process's virtual address space (what RLIMIT_AS counts); 0 where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _limit_memory(memory_mb: int | None) -> None:
    """Cap the address space at what the worker uses now (imports done) plus `memory_mb`.

    NOTE: relative to the start, not absolute: a worker's baseline depends on the machine (a CUDA
    build of torch maps gigabytes of libraries that are never touched), the budget per task does not.
    """
    if memory_mb is None:
        return
    base = address_space_bytes()
    if base == 0:
        logger.warning("cannot read this process's address space; parsing without a memory limit")
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = base + (memory_mb << 20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot limit the parser's memory (%s); parsing without a limit", exc)


def _exit_with_parent(parent: int) -> None:
    """Stop a worker whose supervisor died (a hung task would otherwise run forever)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _worker_main(
    conn: Connection,
    fn: Callable[..., Any],
    memory_mb: int | None,
    initializer: Callable[..., None] | None,
    initargs: tuple,
    parent: int,
) -> None:
    """A worker's life: limit memory, then run tasks until told to stop. Top-level for spawn."""
    global _conn
    # Ctrl-C goes to the whole process group: the supervisor decides, workers carry on until killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)
    _limit_memory(memory_mb)
    _conn = conn
    conn.send(("ready", None))
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        if args is None:
            return
        try:
            reply = ("done", TaskStatus.OK, fn(*args), "")
        except MemoryError:
            reply = ("done", TaskStatus.MEMORY, None, "")
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor as the task's outcome
            reply = ("done", TaskStatus.ERROR, None, _one_line(f"{type(exc).__name__}: {exc}"))
        try:
            conn.send(reply)
        except MemoryError:
            os._exit(_EXIT_OUT_OF_MEMORY)
        except Exception as exc:  # noqa: BLE001 - e.g. a value that cannot be pickled
            conn.send(("done", TaskStatus.ERROR, None, _one_line(f"cannot send the result ({exc})")))


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ------------------------------------------------------------------------- supervisor side


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    key: Hashable = None
    started: float = 0.0  # when the current task was sent (monotonic); 0: idle

    @property
    def busy(self) -> bool:
        return self.started > 0


class WorkerPool:
    """Spawned worker processes that run `fn(*args)` for tasks, each under a deadline and a
    memory limit; a worker that crashed, timed out or ran out of memory is replaced.

    Args:
        fn: a top-level function (pickled by reference).
        workers: most processes at once.
        timeout_s: wall-clock seconds a task may run (None: no deadline).
        memory_mb: address space a task may add to the worker's own at start (None: no limit).
        on_event: called in this process, from the supervising thread, for each `emit` payload.
        initializer: called with `initargs` in each worker when it starts (top-level).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        workers: int = 1,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        on_event: Callable[[Any], None] | None = None,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
    ) -> None:
        self.fn = fn
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.on_event = on_event
        self.initializer = initializer
        self.initargs = initargs
        self.restarts = 0  # workers replaced after a crash, timeout or memory kill
        # NOTE: spawn, not fork: the parent may hold model threads (API, web app) that fork would copy.
        self._context = multiprocessing.get_context("spawn")
        self._pool: list[_Worker] = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def run(self, tasks: Iterable[tuple[Hashable, tuple]]) -> Iterator[TaskOutcome]:
        """Run (key, args) tasks; yield one outcome per task as each finishes (not in order).

        Workers stay up between calls. Closing the iterator early kills the busy workers.
        """
        pending = deque(tasks)
        if not pending:
            return
        results: queue.Queue[TaskOutcome | BaseException | None] = queue.Queue()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._supervise, args=(pending, results, stop), name="worker-pool", daemon=True
        )
        thread.start()
        try:
            while True:
                item = results.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()
            for worker in [w for w in self._pool if w.busy]:
                self._discard(worker)

    def close(self) -> None:
        """Stop every worker (idle ones are asked, busy or stuck ones killed)."""
        for worker in self._pool:
            if not worker.busy:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
        deadline = time.monotonic() + 5
        for worker in list(self._pool):
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            self._discard(worker)

    # -- the supervising thread

    def _supervise(self, pending: deque, results: queue.Queue, stop: threading.Event) -> None:
        try:
            remaining = len(pending)
            while remaining and not stop.is_set():
                self._dispatch(pending)
                busy = [w for w in self._pool if w.busy or not w.ready]
                wait([w.conn for w in busy] + [w.process.sentinel for w in busy], self._wait_s(busy))
                for worker in busy:
                    outcome = self._check(worker)
                    if outcome is not None:
                        results.put(outcome)
                        remaining -= 1
            results.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            results.put(exc)

    def _dispatch(self, pending: deque) -> None:
        while len(self._pool) < self.workers and len(self._pool) < sum(w.busy for w in self._pool) + len(pending):
            self._pool.append(self._start())
        for worker in self._pool:
            if pending and worker.ready and not worker.busy:
                key, args = pending.popleft()
                worker.key, worker.started = key, time.monotonic()
                # A worker that died meanwhile fails the send: _check reports it as this task's crash.
                with contextlib.suppress(OSError):
                    worker.conn.send(args)

    def _start(self) -> _Worker:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(theirs, self.fn, self.memory_mb, self.initializer, self.initargs, os.getpid()),
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def _wait_s(self, busy: list[_Worker]) -> float:
        if self.timeout_s is None:
            return _POLL_S
        now = time.monotonic()
        left = [w.started + self.timeout_s - now for w in busy if w.busy]
        return max(0.0, min([_POLL_S, *left]))

    def _check(self, worker: _Worker) -> TaskOutcome | None:
        """Read what a worker sent; an outcome when its task ended (or it died or overran)."""
        try:
            while worker.conn.poll():
                kind, *rest = worker.conn.recv()
                if kind == "event":
                    self._relay(rest[0])
                elif kind == "ready":
                    worker.ready = True
                else:
                    status, value, detail = rest
                    outcome = TaskOutcome(worker.key, TaskStatus(status), value, detail, self._took(worker))
                    worker.key, worker.started = None, 0.0
                    if outcome.status == TaskStatus.MEMORY:
                        # NOTE: C libraries may be left in a bad state by a failed allocation.
                        self._discard(worker)
                        self.restarts += 1
                    return outcome
        except Exception:  # noqa: BLE001 - EOF or a message cut short: the worker is gone
            worker.process.join(timeout=5)
        if not worker.process.is_alive():
            return self._replace(worker, *self._death(worker))
        if worker.busy and self.timeout_s is not None and self._took(worker) >= self.timeout_s:
            return self._replace(worker, TaskStatus.TIMEOUT, f"over {self.timeout_s:g} s")
        return None

    def _death(self, worker: _Worker) -> tuple[TaskStatus, str]:
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        if code == _EXIT_OUT_OF_MEMORY:
            return TaskStatus.MEMORY, ""
        if code is not None and code < 0:
            try:
                detail = signal.Signals(-code).name
            except ValueError:
                detail = f"signal {-code}"
        else:
            detail = f"exit status {code}"
        if not worker.ready:
            detail = f"the worker failed to start ({detail})"
        return TaskStatus.CRASH, detail

    def _replace(self, worker: _Worker, status: TaskStatus, detail: str) -> TaskOutcome | None:
        outcome = TaskOutcome(worker.key, status, None, detail, self._took(worker)) if worker.busy else None
        if not worker.busy and worker.ready:
            logger.warning("an idle parser worker died (%s); starting another", detail)
        self._discard(worker)
        self.restarts += 1
        if outcome is None and not worker.ready:
            # NOTE: a worker that dies before its first task would be restarted forever.
            raise RuntimeError(f"worker processes cannot start ({detail}); see the log above")
        return outcome

    def _discard(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        worker.conn.close()
        if worker.process.exitcode is not None:
            worker.process.close()
        if worker in self._pool:
            self._pool.remove(worker)

    def _took(self, worker: _Worker) -> float:
        return time.monotonic() - worker.started if worker.busy else 0.0

    def _relay(self, payload: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(payload)
        except Exception:  # noqa: BLE001 - a broken progress callback must not stop parsing
            logger.exception("progress callback failed")
