"""Folio as an OpenAI-compatible endpoint (`folio serve --api`): `GET /v1/models` and
`POST /v1/chat/completions`, streaming or not, so any OpenAI client can ask the library.

- The model names a library scope: `folio` is the asking user's whole library,
  `folio:doc:<id>` one document (its id, a unique id prefix or its file name).
- The last user message is the question (earlier turns are not read: each question is answered
  on its own, as in the web app). Text parts of list content are joined; image parts are
  accepted and not read. `max_tokens` (or `max_completion_tokens`) lowers the answer's token
  limit; `temperature`, `stop` and other fields are accepted and ignored (Folio decodes with its
  configured settings; a new temperature would load a second copy of the model).
- The answer's text carries `[p. N]` markers where the model cited evidence (or, for an answer
  without markers, the attributed pages at its end); its citations come in the extension field
  `folio_citations` of the message (on the final chunk's `delta` when streaming): one object per
  cited region, `{"doc_id", "file_name", "page", "quote", "bbox": [x0, y0, x1, y1], "how"}`
  (bbox in PDF points of the displayed page, `how` "cited" or "attributed").
- Auth: `Authorization: Bearer KEY`, where KEY is an account's key (`folio user key NAME`) or
  `serve.api_key` (the local user's); with neither accounts nor a web login nor `serve.api_key`
  (a loopback library of one user), no key is needed. A wrong key is 401.
- Errors are OpenAI-style JSON, `{"error": {"message", "type", "param", "code"}}`, with a
  one-line message; a question that fails mid-stream ends the stream with such an event.
- Questions answered at once are `serve.concurrent_questions` (others wait their turn), and a
  question waits for the background model load, as in the web app.

The routes are a FastAPI app of their own (`build_api`): `serve` mounts it at `/v1` beside the
web page, or serves it alone (`--api-only`).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import Folio
from app.web.engine import Engine
from pipeline.answering.types import MARKER, Citation
from pipeline.config import resolve_options
from pipeline.evaluation.scoring import NOT_ANSWERABLE, is_not_answerable
from pipeline.library.documents import resolve_documents
from pipeline.library.owners import api_key_user

logger = logging.getLogger(__name__)

LIBRARY_MODEL = "folio"
DOC_MODEL_PREFIX = "folio:doc:"
MAX_BODY_BYTES = 16 * 2**20  # most bytes of a request body: room for several base64 images
_PART_TYPES = {"text", "image_url", "input_audio", "file", "refusal"}
# A trailing "[", "[3", "[2, " may still become a marker: held back until it closes.
_OPEN_MARKER = re.compile(r"\[[\d\s,;]{0,30}\Z")


class ApiError(Exception):
    """A request the endpoint answers with an OpenAI-style error (`status`, one-line message)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = one_line(message)
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The error as OpenAI's JSON body."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def one_line(message: str) -> str:
    """The first line of `message`, stripped (never a traceback)."""
    return ((message or "").strip().splitlines() or ["unknown error"])[0]


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,  # noqa: A002
) -> dict[str, Any]:
    """`{"error": {...}}` as the OpenAI API returns it."""
    return {"error": {"message": one_line(message), "type": type, "param": param, "code": code}}


# ------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat completion request Folio acts on.

    Attributes:
        model: The library scope (`folio` or `folio:doc:<id, prefix or file name>`).
        question: The last user message's text.
        stream: Answer as server-sent events.
        max_tokens: Most tokens of the answer (None: the configured limit).
        include_usage: Streaming: send a last chunk with the token usage.
    """

    model: str
    question: str
    stream: bool = False
    max_tokens: int | None = None
    include_usage: bool = False


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a `/v1/chat/completions` body and read what Folio needs; unknown fields are ignored.

    Raises:
        ApiError: 400, naming the field that is missing or of the wrong type.
    """
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(
            400, "'model' must be a non-empty string (see GET /v1/models)", param="model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array of messages", param="messages")
    question = None
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ApiError(
                400, f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]"
            )
        text = _content_text(message.get("content"), f"messages[{i}].content")
        if message["role"] == "user":
            question = text
    if question is None:
        raise ApiError(
            400, "no message with role 'user': the last one is the question", param="messages"
        )
    if not question.strip():
        raise ApiError(400, "the last user message has no text to ask", param="messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ApiError(400, "'max_tokens' must be a positive integer", param="max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise ApiError(400, "'temperature' must be a number from 0 to 2", param="temperature")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise ApiError(400, "'stop' must be a string or an array of strings", param="stop")
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "'n' must be 1: Folio gives one answer per question", param="n")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    return ChatRequest(
        model=model.strip(),
        question=question.strip(),
        stream=bool(stream),
        max_tokens=max_tokens,
        include_usage=bool(options and options.get("include_usage") is True),
    )


def _content_text(content: Any, where: str) -> str:
    """A message content's text: a string, or the text parts of a list of parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or an array of content parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in _PART_TYPES:
            raise ApiError(
                400,
                f"{where}[{j}] must be a content part with 'type' one of: {', '.join(sorted(_PART_TYPES))}",
                param=f"{where}[{j}]",
            )
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(
                    400, f"{where}[{j}].text must be a string", param=f"{where}[{j}].text"
                )
            texts.append(part["text"])
    return "\n".join(texts)


# ------------------------------------------------------------------------------- scopes


def list_models(me: Folio) -> dict[str, Any]:
    """`GET /v1/models`: `folio` (the whole library) and one model per ready document of `me`."""
    owner = me.user or "folio"
    data: list[dict[str, Any]] = [
        {"id": LIBRARY_MODEL, "object": "model", "created": 0, "owned_by": owner,
         "folio_scope": "library"},
    ]  # fmt: skip
    for doc in me.documents():
        if doc.status != "ok":
            continue
        data.append(
            {
                "id": DOC_MODEL_PREFIX + doc.doc_id,
                "object": "model",
                "created": int(doc.created.timestamp()),
                "owned_by": owner,
                "folio_scope": "document",
                "folio_document": {
                    "id": doc.doc_id,
                    "file_name": doc.file_name,
                    "title": doc.title,
                    "pages": doc.pages,
                },
            }  # fmt: skip
        )
    return {"object": "list", "data": data}


def resolve_scope(me: Folio, model: str) -> list[str] | None:
    """The documents a model name asks about: None for the whole library, else one full id.

    Raises:
        ApiError: 404 for a name that is neither `folio` nor one of `me`'s documents (another
            user's documents are reported exactly like missing ones).
    """
    if model == LIBRARY_MODEL:
        return None
    if model.startswith(DOC_MODEL_PREFIX) and model[len(DOC_MODEL_PREFIX) :].strip():
        name = model[len(DOC_MODEL_PREFIX) :].strip()
        try:
            return resolve_documents(me.library, [name], owner=me.user)
        except LookupError:
            pass
    raise no_model(model)


def no_model(model: str) -> ApiError:
    """404 for a model that is not a scope of the asking user's library."""
    return ApiError(
        404,
        f"The model {model!r} does not exist or you do not have access to it: use 'folio' or "
        f"'{DOC_MODEL_PREFIX}<document id or file name>' (see GET /v1/models)",
        param="model",
        code="model_not_found",
    )


# ------------------------------------------------------------------------------- answers


class PageMarkers:
    """Turns the model's evidence markers (`[3]`, `[2, 5]`) into page markers (`[p. 7]`) as
    text streams in; a marker split across deltas is held back until it closes.

    Args:
        pages: The page of each evidence number; markers naming other numbers are dropped.
    """

    def __init__(self, pages: Mapping[int, int]) -> None:
        self.pages = pages
        self.seen = False  # whether any marker named a known evidence item
        self._pending = ""

    def feed(self, delta: str) -> str:
        """The text that can be shown after `delta` arrived."""
        text = self._pending + delta
        held = _OPEN_MARKER.search(text)
        cut = held.start() if held else len(text)
        self._pending = text[cut:]
        return self._convert(text[:cut])

    def flush(self) -> str:
        """What is still held back (the answer ended)."""
        text, self._pending = self._pending, ""
        return self._convert(text)

    def _convert(self, text: str) -> str:
        def pages(match: re.Match[str]) -> str:
            numbers = [int(n) for n in re.findall(r"\d+", match.group(1))]
            found = dict.fromkeys(self.pages[n] for n in numbers if n in self.pages)
            self.seen = self.seen or bool(found)
            return "".join(f"[p. {page}]" for page in found)

        return MARKER.sub(pages, text)


def citations_json(citations: Sequence[Citation]) -> list[dict[str, Any]]:
    """The `folio_citations` field: one object per cited region."""
    return [
        {
            "doc_id": c.doc_id,
            "file_name": c.file_name,
            "page": c.page,
            "quote": c.quote,
            "bbox": [round(float(v), 2) for v in c.bbox],
            "how": c.how,
        }
        for c in citations
    ]


@dataclass(frozen=True)
class Finished:
    """The end of an answer: its citations, why it ended, its token counts."""

    citations: tuple[Citation, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def answer_parts(
    me: Folio, question: str, doc_ids: Sequence[str] | None, *, max_tokens: int | None = None
) -> Iterator[str | Finished]:
    """Answer `question` from `me`'s library through the Answerer's public seam (prepare,
    generate, cite), as text with page markers: text deltas, then a `Finished`.

    NOTE: the seam rather than `Folio.ask_stream` because the evidence pages must be known
    while the text streams, to turn `[n]` into `[p. N]` before it is sent.

    Raises:
        ValueError, LookupError, TypeError: As `Folio.ask` (a bad option or document).
    """
    configured = me.settings.answer.max_new_tokens
    overrides = {"max_new_tokens": min(max_tokens, configured)} if max_tokens else {}
    config, generator = resolve_options(me.settings.answer, me.settings.generator, **overrides)
    answerer = me.answerer
    prepared = answerer.prepare(
        question, doc_ids=doc_ids, config=config, generator_config=generator, owner=me.user
    )
    if not prepared.answerable:
        yield NOT_ANSWERABLE
        yield Finished((), "stop", 0, 0)
        return
    markers = PageMarkers({i: item.page for i, item in enumerate(prepared.items, start=1)})
    run = answerer.generate(prepared)
    for delta in run:
        shown = markers.feed(delta)
        if shown:
            yield shown
    rest = markers.flush()
    if rest:
        yield rest
    generated = run.result
    citations: tuple[Citation, ...] = ()
    if not is_not_answerable(MARKER.sub("", generated.text)):
        citations = tuple(answerer.cite(prepared, generated.text, read=generated.urag_kept))
    if not markers.seen and citations:
        # An answer without markers was attributed after the fact: its pages go at the end.
        yield " " + "".join(f"[p. {p}]" for p in dict.fromkeys(c.page for c in citations))
    generation = generated.generation
    reason = "length" if generation.stop_reason == "max_new_tokens" else "stop"
    yield Finished(citations, reason, generation.prompt_tokens, generation.new_tokens)


def question_error(exc: Exception) -> ApiError:
    """The API error for an exception raised while answering (bad input: 400, else 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return ApiError(400, str(first["msg"]).removeprefix("Value error, "))
    if isinstance(exc, ValueError | LookupError | TypeError):
        return ApiError(400, str(exc))
    logger.exception("API question failed")
    return ApiError(
        500,
        f"internal error ({type(exc).__name__}: {one_line(str(exc))}); the details are in the server log",
        type="server_error",
    )


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def completion_json(model: str, text: str, finished: Finished) -> dict[str, Any]:
    """A non-streamed `chat.completion` object."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "folio_citations": citations_json(finished.citations),
                },
                "finish_reason": finished.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(finished),
    }


def stream_events(request: ChatRequest, parts: Iterator[str | Finished]) -> Iterator[str]:
    """Server-sent events of `chat.completion.chunk`s for an answer, then `data: [DONE]`; a
    failure ends the stream with an error event instead."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _event({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    try:
        for part in parts:
            if isinstance(part, str):
                yield chunk({"content": part})
                continue
            yield chunk({"folio_citations": citations_json(part.citations)}, part.finish_reason)
            if request.include_usage:
                yield _event({**base, "choices": [], "usage": _usage(part)})
    except Exception as exc:  # noqa: BLE001 - the client gets one line; the log keeps the rest
        yield _event(question_error(exc).body())
        return
    finally:
        _close(parts)
    yield "data: [DONE]\n\n"


def _close(parts: Iterator[str | Finished]) -> None:
    """End an answer now (its question turn is given back, its generation stops)."""
    close = getattr(parts, "close", None)
    if close is not None:
        close()


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


# ------------------------------------------------------------------------------- access


@dataclass(frozen=True)
class ApiAccess:
    """Who may ask, by `Authorization: Bearer KEY`.

    Attributes:
        api_key: The local user's key (`serve.api_key`), or None.
        accounts: The library has accounts: their keys (`folio user key`) name their user.
        open: No key is needed (no accounts, no web login, no `api_key`): every request is the
            local user's.
    """

    api_key: str | None = field(repr=False)
    accounts: bool
    open: bool

    def user(self, folio: Folio, authorization: str | None) -> str | None:
        """The user a request's Authorization header names (None: the local user).

        Raises:
            ApiError: 401 for a missing or wrong key.
        """
        if self.open:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(
                401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )
        if self.api_key is not None and hmac.compare_digest(key.encode(), self.api_key.encode()):
            return None
        if self.accounts:
            name = api_key_user(folio.library, key)
            if name is not None:
                return name
        raise ApiError(401, "invalid API key", code="invalid_api_key")


def build_api(
    engine: Engine,
    access: ApiAccess,
    *,
    concurrent: int,
    root_path: str = "",
) -> FastAPI:
    """The endpoint as a FastAPI app whose routes are `/models` and `/chat/completions`
    (mount it at `/v1`, or give `root_path="/v1"` to serve it alone).

    Args:
        engine: The served library (its per-user views, the background model load).
        access: Who may ask.
        concurrent: Questions answered at once; others wait their turn.
        root_path: Prefix of the routes ("" when mounted at /v1).
    """
    api = FastAPI(
        title="Folio (OpenAI-compatible)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    turns = threading.BoundedSemaphore(concurrent)

    @api.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    @api.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        error = question_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    def me(request: Request) -> Folio:
        user = access.user(engine.folio, request.headers.get("authorization"))
        return engine.for_user(user)

    def answer(
        folio: Folio, chat: ChatRequest, doc_ids: list[str] | None
    ) -> Iterator[str | Finished]:
        """`answer_parts` holding one of the question turns, after the model load."""
        with turns:
            engine.wait()
            yield from answer_parts(folio, chat.question, doc_ids, max_tokens=chat.max_tokens)

    @api.get(f"{root_path}/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(list_models, me(request)))

    @api.get(f"{root_path}/models/{{model:path}}")
    async def model(request: Request, model: str) -> JSONResponse:
        listed = await run_in_threadpool(list_models, me(request))
        for entry in listed["data"]:
            if entry["id"] == model:
                return JSONResponse(entry)
        raise no_model(model)

    @api.post(f"{root_path}/chat/completions")
    async def chat_completions(request: Request) -> Any:
        folio = me(request)
        try:
            body = json.loads(await read_body(request))
        except ValueError:
            raise ApiError(400, "the request body must be JSON") from None
        chat = parse_chat_request(body)
        doc_ids = await run_in_threadpool(resolve_scope, folio, chat.model)
        parts = answer(folio, chat, doc_ids)
        if chat.stream:
            return StreamingResponse(
                stream_body(stream_events(chat, parts)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, finished = await run_in_threadpool(_collect, parts)
        return JSONResponse(completion_json(chat.model, text, finished))

    return api


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 past `limit` bytes before it is all read (a question
    with a few figure images is well under it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over {limit // 2**20} MB")


async def stream_body(events: Iterator[str]) -> AsyncIterator[str]:
    """`events` for a StreamingResponse, each made in a worker thread; closed as soon as the
    client goes away.

    NOTE: Starlette only stops iterating a plain iterator when the client disconnects; a
    suspended answer would keep its question turn (and its model run) until garbage collection,
    so later questions could wait forever. A cancelled worker call still finishes before the
    cancellation lands (anyio), so the close below never meets a running generator.
    """
    try:
        while (event := await run_in_threadpool(next, events, None)) is not None:
            yield event
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(_close, events)


def _collect(parts: Iterator[str | Finished]) -> tuple[str, Finished]:
    """The whole text and the end of an answer (errors as `question_error`)."""
    texts: list[str] = []
    try:
        for part in parts:
            if isinstance(part, Finished):
                return "".join(texts), part
            texts.append(part)
    except Exception as exc:  # noqa: BLE001 - mapped to one OpenAI-style error
        raise question_error(exc) from None
    finally:
        _close(parts)
    raise ApiError(500, "the answer ended without its citations", type="server_error")
