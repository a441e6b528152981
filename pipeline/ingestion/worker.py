"""A parser worker process: `python -m pipeline.ingestion.worker FD PARENT_PID`.

`pipeline.ingestion.isolation.WorkerPool` starts its workers here, from Folio's own entry point,
so they never import the caller's `__main__` (which may be a script without a main guard, code
piped to `python -`, `python -c` or a notebook kernel). FD is the worker's end of its connection
to the supervisor, PARENT_PID the supervisor's process id.
"""

import signal
import sys

if __name__ == "__main__":
    # First, before the imports: Ctrl-C goes to the whole process group, and the supervisor
    # decides what happens; workers carry on until it stops or kills them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from pipeline.ingestion.isolation import serve_worker

    serve_worker(int(sys.argv[1]), int(sys.argv[2]))
