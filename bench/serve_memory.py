"""Memory of `folio serve` after one answer, per generator runtime (issue 24).

Usage:
    python -m bench.serve_memory --library LIB --runtime torch openvino

Each runtime in its own server process (`folio serve --api-only` on a free loopback port): the
resident memory of the server and its children before the first question, after one answer
asked through the OpenAI-compatible endpoint, and the server's own peak (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from openai import OpenAI

QUESTION = "What does the parser turn a table into?"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(library: Path, runtime: str, question: str = QUESTION) -> dict:
    """Start a server on `runtime`, ask `question` once, and report its memory."""
    port = _free_port()
    folio = Path(sys.executable).with_name("folio")
    env = {**os.environ, "FOLIO_GENERATOR__RUNTIME": runtime}
    server = subprocess.Popen(
        [str(folio), "-l", str(library), "serve", "--api-only", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=900)
        deadline = time.monotonic() + 300
        while True:
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"folio serve on {runtime} did not start") from None
                time.sleep(1)
        before = _tree_rss_mb(server.pid)
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model="folio", messages=[{"role": "user", "content": question}]
        )
        return {
            "runtime": runtime,
            "rss_before_mb": round(before),
            "rss_after_answer_mb": round(_tree_rss_mb(server.pid)),
            "server_peak_mb": round(_peak_mb(server.pid)),
            "first_answer_s": round(time.perf_counter() - start, 1),
            "answer": reply.choices[0].message.content,
            "load_avg": [round(x, 1) for x in psutil.getloadavg()],
        }
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--runtime", nargs="+", default=["torch", "openvino"])
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args()
    for runtime in args.runtime:
        print(json.dumps(measure(args.library, runtime, args.question)), flush=True)


if __name__ == "__main__":
    main()
