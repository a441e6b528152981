"""A scripted OpenAI-compatible chat-completions server for the remote generator's tests.

Run as its own process (`FaultServer`, or `python openai_fault_server.py`): it listens on a free
loopback port and prints `PORT <n>` once it accepts connections. It speaks the streaming protocol
(`data: {chunk}` server-sent events, then `data: [DONE]`) and validates every request body
against the official client's own request schema (`CompletionCreateParamsStreaming`), answering
400 with the first schema error as real servers do.

The request's model name picks what it does (`scenario:argument`):

    normal         stream ANSWER word by word, finish_reason "stop", usage, [DONE]
    lines          ANSWER, a newline, then more text for up to 5 s (a client that stops at the
                   newline must close the connection: the server records the disconnect)
    die            two chunks, then the connection is dropped (no terminating chunk)
    exit           two chunks, then the whole server process exits
    slow:S         sleep S seconds before answering at all
    stall:S        one chunk, then S seconds of silence
    busy:N         HTTP 429 (Retry-After-Ms: 20) for the first N requests of this model name
    error          HTTP 503 every time
    auth           HTTP 401 unless the key is KEY (the 401 echoes the key it got, as some
                   services do, so that the client's scrubbing is tested)
    nofinish       ANSWER, then [DONE] without a finish_reason

`GET /_requests` returns every request received (body and Authorization header, in order) and
`GET /_events` how each stream ended (`finished:MODEL` or `disconnected:MODEL`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ANSWER = ["The", " revenue", " was", " 4.2", " billion", " dollars", " [1]"]
KEY = "sk-fault-server-key-0123456789"


def build_app() -> Any:
    from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
    from pydantic import TypeAdapter, ValidationError

    schema = TypeAdapter(CompletionCreateParamsStreaming)
    app = FastAPI()
    requests: list[dict[str, Any]] = []
    events: list[str] = []
    attempts: collections.Counter[str] = collections.Counter()

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        body = {"error": {"message": message, "type": "fault_server", "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.get("/_requests")
    async def recorded() -> list[dict[str, Any]]:
        return requests

    @app.get("/_events")
    async def noticed() -> list[str]:
        return events

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        authorization = request.headers.get("authorization", "")
        requests.append({"body": body, "authorization": authorization})
        try:
            _consume(schema.validate_python(body))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return error(400, f"invalid request at {where}: {first['msg']}")
        model = str(body["model"])
        scenario, _, argument = model.partition(":")
        attempts[model] += 1
        if scenario == "busy" and attempts[model] <= int(argument):
            return error(429, "rate limited: slow down", **{"retry-after-ms": "20"})
        if scenario == "error":
            return error(503, "the model is overloaded", **{"retry-after-ms": "20"})
        if scenario == "auth" and authorization != f"Bearer {KEY}":
            given = authorization.removeprefix("Bearer ")
            return error(401, f"Incorrect API key provided: {given}")
        if scenario == "slow":
            await asyncio.sleep(float(argument))
        return StreamingResponse(
            _events(model, scenario, argument, body, events),
            media_type="text/event-stream",
        )

    return app


def _consume(value: Any) -> None:
    """Walk a validated request: pydantic checks `Iterable` fields (the messages, a message's
    content parts) only as they are iterated."""
    if isinstance(value, dict):
        for item in value.values():
            _consume(item)
    elif not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
        for item in value:
            _consume(item)


async def _events(
    model: str, scenario: str, argument: str, body: dict, events: list[str]
) -> AsyncIterator[str]:
    """The scripted stream; records whether it ran to its end or the client went away (Starlette
    cancels the stream when the client disconnects)."""
    finished = False
    try:
        async for part in _script(model, scenario, argument, body):
            yield part
        finished = True
    finally:
        events.append(f"{'finished' if finished else 'disconnected'}:{model}")


async def _script(model: str, scenario: str, argument: str, body: dict) -> AsyncIterator[str]:
    def chunk(text: str | None = None, finish: str | None = None, usage: bool = False) -> str:
        delta = {"role": "assistant", "content": text} if text is not None else {}
        data: dict[str, Any] = {
            "id": "chatcmpl-fault",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            data["usage"] = {
                "prompt_tokens": 37,
                "completion_tokens": len(ANSWER),
                "total_tokens": 37 + len(ANSWER),
            }
        return f"data: {json.dumps(data)}\n\n"

    yield chunk("")  # the role chunk real servers open with
    if scenario in ("die", "exit"):
        for word in ANSWER[:2]:
            yield chunk(word)
            await asyncio.sleep(0.05)
        if scenario == "exit":
            os._exit(3)
        raise ConnectionAbortedError("scripted: the connection drops mid-answer")
    if scenario == "stall":
        yield chunk(ANSWER[0])
        await asyncio.sleep(float(argument))
    for word in ANSWER:
        yield chunk(word)
        await asyncio.sleep(0.01)
    if scenario == "lines":
        yield chunk("\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            yield chunk(" and more text nobody should read")
            await asyncio.sleep(0.05)
    if scenario != "nofinish":
        limit = body.get("max_tokens")
        finish = "length" if limit is not None and limit <= len(ANSWER) else "stop"
        yield chunk(finish=finish, usage=True)
    yield "data: [DONE]\n\n"


class FaultServer:
    """The scripted server in its own process on a free loopback port.

    Use as a context manager; `base_url` is its API root (`http://127.0.0.1:PORT/v1`).
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultServer:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until the server listens (or dies)
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the fault server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        """The requests the server received (those for `model` only, when given)."""
        got = self._get("/_requests")
        return [r for r in got if model is None or r["body"].get("model") == model]

    def events(self) -> list[str]:
        return self._get("/_events")

    def _get(self, path: str) -> Any:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10).json()


def main() -> None:
    import uvicorn

    app = build_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        print(f"PORT {sock.getsockname()[1]}", flush=True)  # listening from here on
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
