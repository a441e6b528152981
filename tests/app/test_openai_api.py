"""`folio serve --api` asked by the official `openai` client over HTTP (issue 25).

One real `folio serve --api` process on a free loopback port, on a library with two accounts,
alice and bob, each owning a copy of the project's sample PDF (so each has a document id of
their own) and an API key from `issue_api_key` (what `folio user key` runs). The generator is the
tiny random model of tests/conftest.py (the mechanics, in seconds; its words are noise, so the
tests check the protocol, the citations and the scoping, not the answer's wording), with BM25
retrieval and the real MiniLM for the sampler and the citations.

The pure parts of the endpoint (request checks, page markers split across stream deltas) are
tested without a server at the end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from app.web.openai_api import (
    ApiAccess,
    ApiError,
    ChatRequest,
    Finished,
    PageMarkers,
    parse_chat_request,
    stream_body,
    stream_events,
)
from pipeline.ingestion.sample import write_sample_pdf
from pipeline.library.owners import add_user, issue_api_key
from storage import StorageConfig, open_library

QUESTION = "How many pages per second does the parser process?"
PAGE_MARKER = re.compile(r"\[p\. (\d+)\]")


@pytest.fixture(scope="module")
def served(start_folio_server, tiny_settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The server's /v1 address, alice's and bob's keys and document ids."""
    from app import Folio

    settings = tiny_settings(max_new_tokens=8)
    pdf = write_sample_pdf(tmp_path_factory.mktemp("openai-sample") / "folio-guide.pdf")
    found: dict = {}

    def prepare(library: Path) -> None:
        opened = open_library(StorageConfig(library=library))
        for name in ("alice", "bob"):
            add_user(opened, name, f"{name}-password")
            found[f"{name}_key"] = issue_api_key(opened, name)
        opened.close()
        for name in ("alice", "bob"):
            folio = Folio(library=library, user=name, **settings)
            (result,) = folio.ingest([pdf])
            assert result.status == "added", result
            found[f"{name}_doc"] = result.doc_id
            folio.close()

    artifacts = tmp_path_factory.mktemp("openai-artifacts")
    url, log = start_folio_server(settings, artifacts, prepare=prepare, args=["--api"])
    return {**found, "base_url": f"{url}v1", "log": log}


def _client(served: dict, who: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=served["base_url"], api_key=served[f"{who}_key"], max_retries=0, timeout=300
    )


def _ask(client: openai.OpenAI, model: str, **extra):  # noqa: ANN202 - a ChatCompletion
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], **extra
    )


def _check_citations(citations: list, doc_id: str, text: str) -> None:
    assert citations, "the answer has no citations"
    for c in citations:
        assert c["doc_id"] == doc_id
        assert c["file_name"] == "folio-guide.pdf"
        assert isinstance(c["page"], int) and c["page"] >= 1
        assert isinstance(c["quote"], str) and c["quote"]
        assert len(c["bbox"]) == 4 and c["bbox"][0] < c["bbox"][2] and c["bbox"][1] < c["bbox"][3]
        assert c["how"] in ("cited", "attributed")
    marked = {int(p) for p in PAGE_MARKER.findall(text)}
    assert marked, f"no [p. N] marker in {text!r}"
    assert marked <= {c["page"] for c in citations}


def test_models_are_the_library_and_each_own_document(served: dict) -> None:
    for me, other in (("alice", "bob"), ("bob", "alice")):
        models = {m.id: m for m in _client(served, me).models.list()}
        assert set(models) == {"folio", f"folio:doc:{served[f'{me}_doc']}"}
        document = models[f"folio:doc:{served[f'{me}_doc']}"].model_extra["folio_document"]
        assert document["file_name"] == "folio-guide.pdf" and document["pages"] >= 1
        assert all(served[f"{other}_doc"] not in name for name in models)


def test_an_answer_with_page_markers_and_citations(served: dict) -> None:
    reply = _ask(_client(served, "alice"), f"folio:doc:{served['alice_doc']}", max_tokens=6)
    message = reply.choices[0].message
    assert reply.object == "chat.completion" and message.role == "assistant"
    _check_citations(message.model_extra["folio_citations"], served["alice_doc"], message.content)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 6 and reply.usage.prompt_tokens > 0


def test_a_streamed_answer_is_the_same_answer(served: dict) -> None:
    client = _client(served, "alice")
    model = f"folio:doc:{served['alice_doc']}"
    whole = _ask(client, model).choices[0].message
    chunks = list(_ask(client, model, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.content  # greedy decoding: the same answer, streamed
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(final) == 1
    citations = final[0].choices[0].delta.model_extra["folio_citations"]
    assert citations == whole.model_extra["folio_citations"]
    _check_citations(citations, served["alice_doc"], text)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_the_whole_library_of_one_user_only(served: dict) -> None:
    reply = _ask(_client(served, "bob"), "folio")
    message = reply.choices[0].message
    _check_citations(message.model_extra["folio_citations"], served["bob_doc"], message.content)


def test_another_users_document_is_not_there(served: dict) -> None:
    bob = _client(served, "bob")
    for name in (served["alice_doc"], served["alice_doc"][:12]):
        with pytest.raises(openai.NotFoundError) as caught:
            _ask(bob, f"folio:doc:{name}")
        assert "does not exist or you do not have access" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        bob.models.retrieve(f"folio:doc:{served['alice_doc']}")


def test_a_wrong_or_missing_key_is_401(served: dict) -> None:
    wrong = openai.OpenAI(base_url=served["base_url"], api_key="folio-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        _ask(wrong, "folio")
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    response = httpx.get(f"{served['base_url']}/models")
    assert response.status_code == 401 and "missing API key" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"model": "folio", "messages": [{"role": "system", "content": "Be brief."}]},
            "no message with role 'user'",
        ),
        ({"model": "folio", "messages": "What is Folio?"}, "'messages' must be a non-empty array"),
        (
            {"model": "folio", "messages": [{"role": "user", "content": 42}]},
            "messages[0].content must be",
        ),
        (
            {"model": 7, "messages": [{"role": "user", "content": "Hi"}]},
            "'model' must be a non-empty string",
        ),
        (
            {
                "model": "folio",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": "ten",
            },
            "'max_tokens'",
        ),
    ],
    ids=[
        "no-user-message",
        "messages-not-a-list",
        "content-a-number",
        "model-a-number",
        "max-tokens-text",
    ],
)
def test_a_bad_request_is_400_with_one_line(served: dict, body: dict, says: str) -> None:
    response = httpx.post(
        f"{served['base_url']}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {served['alice_key']}"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"
    assert "\n" not in error["message"] and "Traceback" not in response.text


def test_the_client_reports_a_bad_request(served: dict) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _client(served, "alice").chat.completions.create(
            model="folio", messages=[{"role": "assistant", "content": "Hello"}]
        )
    assert "no message with role 'user'" in caught.value.message
    response = httpx.post(
        f"{served['base_url']}/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {served['alice_key']}"},
    )
    assert (
        response.status_code == 400
        and response.json()["error"]["message"] == "the request body must be JSON"
    )


def test_a_body_over_the_limit_is_413_before_it_is_read(served: dict) -> None:
    from app.web.openai_api import MAX_BODY_BYTES

    response = httpx.post(
        f"{served['base_url']}/chat/completions",
        content=b" " * (MAX_BODY_BYTES + 1),
        headers={"Authorization": f"Bearer {served['alice_key']}"},
        timeout=60,
    )
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "the request body is over 16 MB"


def test_the_standard_request_shape_is_accepted(served: dict) -> None:
    """Parts content with an image, a system message, earlier turns, sampling fields and fields
    Folio does not know: the last user message's text is the question."""
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    reply = _client(served, "alice").chat.completions.create(
        model="folio",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is Folio?"},
            {"role": "assistant", "content": "A library."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
                ],
            },
        ],
        max_tokens=4,
        temperature=0.7,
        stop=["\n\n"],
        extra_body={"folio_unknown_option": True, "user_tag": "x"},
    )
    assert reply.choices[0].message.model_extra["folio_citations"]
    assert reply.usage.completion_tokens <= 4


def test_the_server_log_has_no_traceback_for_bad_requests(served: dict) -> None:
    assert "Traceback" not in Path(served["log"]).read_text(encoding="utf-8", errors="replace")


# ------------------------------------------------------------------ without a server


def test_page_markers_split_across_deltas() -> None:
    markers = PageMarkers({1: 4, 2: 9, 3: 4})
    deltas = ["Ten pages", " [", "1", ", 2", "] and", " more [3][7]", " [", "x] end ["]
    shown = "".join(markers.feed(d) for d in deltas) + markers.flush()
    assert shown == "Ten pages [p. 4][p. 9] and more [p. 4] [x] end ["
    assert markers.seen


def test_a_stream_the_client_left_gives_its_question_turn_back() -> None:
    """A client that goes away mid-answer: the answer is closed at once, so the next question
    does not wait for garbage collection to get a turn."""
    import threading

    import anyio

    turns = threading.BoundedSemaphore(1)
    closed = []

    def parts():  # noqa: ANN202 - the answer's parts, holding a question turn as build_api's do
        with turns:
            try:
                yield "Ten"
                yield " pages"
                yield Finished((), "stop", 3, 2)
            finally:
                closed.append(True)

    async def leave_after_the_first_words() -> None:
        body = stream_body(stream_events(ChatRequest("folio", "q", stream=True), parts()))
        assert '"role": "assistant"' in await body.__anext__()
        assert '"content": "Ten"' in await body.__anext__()
        assert not turns.acquire(blocking=False)  # the answer holds its turn
        await body.aclose()

    anyio.run(leave_after_the_first_words)
    assert closed == [True] and turns.acquire(blocking=False)

    async def read_all() -> list[str]:
        return [
            event
            async for event in stream_body(
                stream_events(ChatRequest("folio", "q", stream=True), parts())
            )
        ]

    turns.release()
    events = anyio.run(read_all)
    assert events[-1] == "data: [DONE]\n\n" and '"finish_reason": "stop"' in events[-2]
    assert turns.acquire(blocking=False)


def test_a_question_that_fails_mid_stream_ends_with_one_error_event() -> None:
    def parts():  # noqa: ANN202
        yield "Ten"
        raise LookupError("no document matches 'x'\nsecond line")

    events = list(stream_events(ChatRequest("folio", "q", stream=True), parts()))
    assert '"content": "Ten"' in events[1] and "[DONE]" not in "".join(events)
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert (
        error["message"] == "no document matches 'x'" and error["type"] == "invalid_request_error"
    )


def test_access_by_the_local_key_or_none() -> None:
    """Without accounts the library is never read: the local key, or nothing when open."""
    keyed = ApiAccess(api_key="local-secret", accounts=False, open=False)
    assert keyed.user(None, "Bearer local-secret") is None  # type: ignore[arg-type]
    for header in (
        None,
        "",
        "Bearer",
        "Basic local-secret",
        "Bearer local-secre",
        "Bearer local-secret2",
    ):
        with pytest.raises(ApiError) as caught:
            keyed.user(None, header)  # type: ignore[arg-type]
        assert caught.value.status == 401
    assert ApiAccess(api_key=None, accounts=False, open=True).user(None, "Bearer anything") is None  # type: ignore[arg-type]
    assert "local-secret" not in repr(keyed)


def test_parse_keeps_the_last_user_message_and_ignores_unknown_fields() -> None:
    request = parse_chat_request(
        {
            "model": "folio:doc:abc",
            "messages": [
                {"role": "user", "content": "first"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "second"},
                        {"type": "image_url", "image_url": {"url": "x"}},
                    ],
                },
            ],
            "stream": True,
            "max_completion_tokens": 5,
            "seed": 3,
            "tools": [],
        }
    )
    assert (request.model, request.question, request.stream, request.max_tokens) == (
        "folio:doc:abc",
        "second",
        True,
        5,
    )
    with pytest.raises(ApiError, match="'n' must be 1"):
        parse_chat_request(
            {"model": "folio", "messages": [{"role": "user", "content": "q"}], "n": 2}
        )
    with pytest.raises(ApiError, match="'stream' must be true or false"):
        parse_chat_request(
            {"model": "folio", "messages": [{"role": "user", "content": "q"}], "stream": "yes"}
        )
    assert json.loads(json.dumps(ApiError(400, "two\nlines").body()))["error"]["message"] == "two"


# ------------------------------------------------------------------ keys and `folio serve` flags


def test_folio_user_key_issues_a_key_that_replaces_the_last(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app
    from pipeline.library.owners import api_key_user

    runner = CliRunner()
    library = ["--library", str(tmp_path / "lib")]
    result = runner.invoke(
        app, [*library, "user", "add", "zoe", "--password-stdin"], input="long enough\n"
    )
    assert result.exit_code == 0, result.output
    first = runner.invoke(app, [*library, "user", "key", "zoe"])
    second = runner.invoke(app, [*library, "user", "key", "zoe"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    key1, key2 = first.stdout.strip().splitlines()[-1], second.stdout.strip().splitlines()[-1]
    assert key1.startswith("folio-") and key1 != key2
    opened = open_library(StorageConfig(library=tmp_path / "lib"))
    assert api_key_user(opened, key2) == "zoe" and api_key_user(opened, key1) is None
    assert api_key_user(opened, "folio-nope") is None and api_key_user(opened, "") is None
    opened.close()
    result = runner.invoke(app, [*library, "user", "key", "nobody"])
    assert (
        result.exit_code == 1
        and "no user 'nobody'" in result.output
        and "Traceback" not in result.output
    )


def test_serve_api_flags_and_their_refusals(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    launched: list[dict] = []
    monkeypatch.setattr("app.web.serve", lambda *a, **kw: launched.append(kw))
    runner = CliRunner()
    library = ["--library", str(tmp_path / "lib")]
    result = runner.invoke(app, [*library, "serve", "--api"])
    assert result.exit_code == 0, result.output
    access = launched[-1]["api"]
    assert access.open and access.api_key is None and launched[-1]["api_only"] is False
    result = runner.invoke(app, [*library, "serve", "--api", "--auth", "ann:password1"])
    assert result.exit_code == 1 and "needs a key for the endpoint too" in result.output
    result = runner.invoke(app, [*library, "serve", "--api-only", "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "refusing to serve 0.0.0.0" in result.output
    monkeypatch.setenv("FOLIO_SERVE__API_KEY", "local-key")
    result = runner.invoke(app, [*library, "serve", "--api-only", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    access = launched[-1]["api"]
    assert not access.open and access.api_key == "local-key" and launched[-1]["api_only"] is True
    assert "local-key" not in repr(launched[-1]) and "local-key" not in result.output


@pytest.mark.slow  # a second server and library (the first covers the endpoint in the default suite)
def test_api_only_with_the_local_users_key(tiny_settings, tmp_path: Path) -> None:
    """`folio serve --api-only` (no web page) with FOLIO_SERVE__API_KEY: the local user's library."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from app import Folio

    settings = tiny_settings(max_new_tokens=4)
    pdf = write_sample_pdf(tmp_path / "folio-guide.pdf")
    with Folio(library=tmp_path / "lib", **settings) as folio:
        (result,) = folio.ingest([pdf])
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folio_bin = Path(sys.executable).with_name("folio")
    command = [
        str(folio_bin),
        "--library",
        str(tmp_path / "lib"),
        "--config",
        str(tmp_path / "settings.json"),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "FOLIO_SERVE__API_KEY": "local-secret",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*command, "serve", "--api-only", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                httpx.get(f"{base}/models", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 404  # no web page
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=base, api_key="local-secret", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list()] == ["folio", f"folio:doc:{result.doc_id}"]
        reply = _ask(client, "folio:doc:folio-guide.pdf")  # a document by its file name
        _check_citations(
            reply.choices[0].message.model_extra["folio_citations"],
            result.doc_id,
            reply.choices[0].message.content,
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def test_folio_serves_as_the_remote_generator_of_another_folio(served: dict) -> None:
    """The two halves of the protocol against each other: the remote generator
    (runtime=openai, the official client underneath) streams an answer from a real
    `folio serve --api`, which reads the prompt as a question about its library."""
    from models.config import GeneratorConfig
    from models.generator import load_generator

    generator = load_generator(
        GeneratorConfig(
            runtime="openai",
            base_url=served["base_url"],
            model="folio",
            api_key=served["alice_key"],
            max_retries=0,
            request_timeout_s=300,
        )
    )
    stream = generator.stream(QUESTION, stop_at_newline=False)
    deltas = list(stream)
    result = stream.result
    assert result.text and "".join(deltas).strip() == result.text.strip()
    assert PAGE_MARKER.search(result.text), result.text  # Folio's own page markers came back
    assert result.ttft_s > 0
