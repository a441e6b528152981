"""Run a function in supervised worker processes, with a deadline and a memory limit per task.

A task that crashes its worker (a segfault in C code), hangs, or runs out of memory costs only
that worker: it is killed and replaced, the outcome says what happened, and the other workers and
the calling process carry on. Used by ingestion to parse PDFs (MuPDF is C code fed untrusted files).

    with WorkerPool(parse_one, workers=2, timeout_s=600, memory_mb=2048) as pool:
        for outcome in pool.run([(key, (path,)) for key, path in todo]):
            ...  # outcome.status: "ok" (outcome.value), "error", "timeout", "memory" or "crash"

`fn` must be a top-level function of an importable module (not `__main__`); a task calls
`emit(payload)` to send progress events, which the pool hands to `on_event` in this process.

Workers start as `python -m pipeline.ingestion.worker`, Folio's own entry point: unlike
multiprocessing's spawn, they never import the caller's `__main__`, so a script without a main
guard, code piped to `python -`, `python -c` and notebook kernels can all ingest.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import pickle
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A worker that cannot even report its MemoryError exits with this status.
_EXIT_OUT_OF_MEMORY = 86
_POLL_S = 0.5  # how often the supervisor wakes without any message (stop requests, deadlines)
# The folder that holds the `pipeline` package: a worker imports its entry point from there.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


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


def serve_worker(fd: int, parent: int) -> None:
    """A worker's life (`python -m pipeline.ingestion.worker`): take the job the supervisor
    sends on the connection `fd`, limit memory, then run tasks until told to stop."""
    global _conn
    conn = Connection(fd)
    os.set_inheritable(fd, False)  # not to the subprocesses a task starts (tesseract)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    try:
        sys_path, job, memory_mb = conn.recv()
    except (EOFError, OSError):
        return
    try:
        # The supervisor's import path, so `fn` imports here as it did there (spawn does the same).
        sys.path[:] = sys_path
        fn, initializer, initargs = pickle.loads(job)
        if initializer is not None:
            initializer(*initargs)
    except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which stops the pool
        with contextlib.suppress(OSError):
            conn.send(("failed", _one_line(f"{type(exc).__name__}: {exc}")))
        raise
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
    process: subprocess.Popen
    conn: Connection
    ready: bool = False
    failure: str = ""  # why it could not start, as it reported
    key: Hashable = None
    started: float = 0.0  # when the current task was sent (monotonic); 0: idle

    @property
    def busy(self) -> bool:
        return self.started > 0


class WorkerPool:
    """Worker processes that run `fn(*args)` for tasks, each under a deadline and a
    memory limit; a worker that crashed, timed out or ran out of memory is replaced.

    Args:
        fn: a top-level function of an importable module (pickled by reference).
        workers: most processes at once.
        timeout_s: wall-clock seconds a task may run (None: no deadline).
        memory_mb: address space a task may add to the worker's own at start (None: no limit).
        on_event: called in this process, from the supervising thread, for each `emit` payload.
        initializer: called with `initargs` in each worker when it starts (top-level).

    Raises:
        ValueError: `fn` or `initializer` is defined in `__main__` (workers do not import it).
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
        for function in (fn, initializer):
            if function is not None and function.__module__ == "__main__":
                raise ValueError(
                    f"{function.__qualname__} is defined in __main__: worker processes cannot "
                    "import it; define it in a module"
                )
        self._job = pickle.dumps((fn, initializer, initargs))
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
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            self._discard(worker)

    # -- the supervising thread

    def _supervise(self, pending: deque, results: queue.Queue, stop: threading.Event) -> None:
        try:
            remaining = len(pending)
            while remaining and not stop.is_set():
                self._dispatch(pending)
                busy = [w for w in self._pool if w.busy or not w.ready]
                # A worker that dies closes its end of the connection, which wakes this wait.
                wait([w.conn for w in busy], self._wait_s(busy))
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
        """Start a worker from Folio's entry point and send it its job.

        NOTE: not multiprocessing's spawn, which runs the caller's `__main__` again in each
        worker; not fork either: the parent may hold model threads (API, web app) fork would copy.
        """
        ours, theirs = Pipe(duplex=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SOURCE_ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-P", "-m", "pipeline.ingestion.worker"]
        with theirs:
            process = subprocess.Popen(
                [*command, str(theirs.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL,  # never the caller's (`python -` reads its script there)
                env=env,
                pass_fds=[theirs.fileno()],
            )
        # A worker that died meanwhile fails the send: _check reports that it could not start.
        with contextlib.suppress(OSError):
            ours.send((list(sys.path), self._job, self.memory_mb))
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
                elif kind == "failed":
                    worker.failure = rest[0]
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
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=5)
        if worker.process.poll() is not None:
            return self._replace(worker, *self._death(worker))
        if worker.busy and self.timeout_s is not None and self._took(worker) >= self.timeout_s:
            return self._replace(worker, TaskStatus.TIMEOUT, f"over {self.timeout_s:g} s")
        return None

    def _death(self, worker: _Worker) -> tuple[TaskStatus, str]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=5)
        code = worker.process.returncode
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
            detail = f"the worker failed to start ({worker.failure or detail})"
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
        if worker.process.poll() is None:
            worker.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=5)  # reaped: no zombie left behind
        worker.conn.close()
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
