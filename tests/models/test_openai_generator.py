"""The remote generator (runtime=openai) over real HTTP, against a scripted OpenAI-compatible server
in its own process (`openai_fault_server.py`: normal answers, a connection dropped mid-answer, a
process that dies, a slow or silent server, 429 then success, a wrong key), through the official
`openai` client. No model: each test takes a fraction of a second once the server is up.
The end-to-end test against `transformers serve` is tests/pipeline/test_answer_remote.py."""

from __future__ import annotations

import base64
import io
import logging
import re
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from models._prompt import Evidence
from models.config import GeneratorConfig, GeneratorRuntime
from models.generator import StopReason, build_prompt, load_generator
from models.openai_generator import ApproxTokenizer, OpenAIGenerator, RemoteGeneratorError
from models.runtime import select_runtime
from tests.models.openai_fault_server import ANSWER, KEY, FaultServer

EVIDENCE = [
    "The revenue in 2023 was 4.2 billion dollars, up from 3.9 billion in 2022.",
    "Figure 3 shows the accuracy of each model on the test set.",
]
FULL_ANSWER = "".join(ANSWER)


@pytest.fixture(scope="module")
def server() -> FaultServer:
    with FaultServer() as running:
        yield running


def _generator(server: FaultServer, model: str, **settings) -> OpenAIGenerator:
    config = GeneratorConfig(
        runtime="openai",
        base_url=server.base_url,
        model=model,
        request_timeout_s=settings.pop("request_timeout_s", 5.0),
        max_retries=settings.pop("max_retries", 0),
        **settings,
    )
    generator = load_generator(config)
    assert isinstance(generator, OpenAIGenerator)
    return generator


def _name(scenario: str) -> str:
    """`scenario:<random>`: a model name no other test uses (the server records per name)."""
    return f"{scenario}:{uuid.uuid4().hex[:8]}"


def _prompt():
    return build_prompt("What was the revenue in 2023?", EVIDENCE)


def test_an_answer_streams_with_the_servers_counts_and_timings(server: FaultServer) -> None:
    model = _name("normal")
    generator = _generator(server, model)
    told: list[int] = []
    stream = generator.stream(_prompt(), max_new_tokens=32, on_prefill=told.append)
    deltas = list(stream)
    result = stream.result
    assert "".join(deltas) == result.text == FULL_ANSWER
    assert len(deltas) > 3  # streamed, not one block at the end
    assert result.stop_reason is StopReason.EOS
    # The server's usage wins over Folio's own count; Folio's count is what on_prefill saw.
    assert (result.prompt_tokens, result.new_tokens) == (37, len(ANSWER))
    assert told == [generator.encode(_prompt()).num_tokens] and told[0] > 20
    assert 0 < result.prefill_s <= result.ttft_s and result.decode_s > 0
    assert result.decode_tokens_per_s > 0
    (request,) = server.requests(model)
    body = request["body"]
    assert body["stream"] is True and body["max_tokens"] == 32 and body["temperature"] == 0
    # The same system and user messages as a local chat model reads, for the server's template.
    assert body["messages"] == _prompt().messages()
    assert body["messages"][0]["role"] == "system" and EVIDENCE[0] in body["messages"][1]["content"]


def test_the_budget_is_the_requests_max_tokens(server: FaultServer) -> None:
    generator = _generator(server, _name("normal"))
    result = generator.generate(_prompt(), max_new_tokens=3)
    assert result.stop_reason is StopReason.MAX_NEW_TOKENS


def test_folios_stop_rules_apply_and_end_the_generation_on_the_server(
    server: FaultServer,
) -> None:
    model = _name("lines")
    generator = _generator(server, model)
    result = generator.generate(_prompt())  # stop_at_newline is on by default
    assert result.text == FULL_ANSWER and result.stop_reason is StopReason.NEWLINE
    stopped = generator.generate(_prompt(), stop_strings=(" billion",), stop_at_newline=False)
    assert stopped.text == "The revenue was 4.2" and stopped.stop_reason is StopReason.STOP_STRING
    # Closing the stream closed the connection: the server saw it go instead of writing on.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and f"disconnected:{model}" not in server.events():
        time.sleep(0.05)
    assert f"disconnected:{model}" in server.events()
    assert f"finished:{model}" not in server.events()


def test_a_stream_closed_early_by_its_reader_ends_the_request(server: FaultServer) -> None:
    model = _name("lines")
    generator = _generator(server, model)
    stream = generator.stream(_prompt(), stop_at_newline=False)
    assert next(stream)
    stream._deltas.close()  # what dropping the stream (the web app's Stop) does
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and f"disconnected:{model}" not in server.events():
        time.sleep(0.05)
    assert f"disconnected:{model}" in server.events()


def test_a_connection_dropped_mid_answer_is_one_clear_error(server: FaultServer) -> None:
    generator = _generator(server, _name("die"), max_retries=2)
    stream = generator.stream(_prompt())
    shown: list[str] = []
    with pytest.raises(RemoteGeneratorError) as caught:
        for delta in stream:
            shown.append(delta)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"the generator at {server.base_url} broke off mid-answer")
    assert "no partial answer is kept" in message
    assert "".join(shown) == "The revenue"  # what was shown before it broke
    with pytest.raises(RuntimeError, match="consume the stream"):
        stream.result  # noqa: B018 - no Generation for a broken answer


def test_a_server_process_that_dies_mid_answer_is_one_clear_error() -> None:
    with FaultServer() as dying:
        generator = _generator(dying, "exit")
        with pytest.raises(RemoteGeneratorError, match="broke off mid-answer"):
            generator.generate(_prompt())
        dying.process.wait(timeout=10)
        assert not dying.alive()
        # Then the next question finds nobody listening, and says where it looked.
        with pytest.raises(RemoteGeneratorError) as caught:
            generator.generate(_prompt())
    assert str(caught.value) == (
        f"cannot reach the generator at {dying.base_url}: connection refused; check "
        "FOLIO_GENERATOR__BASE_URL and that the server is running"
    )


def test_a_stream_that_ends_without_finishing_is_an_error(server: FaultServer) -> None:
    generator = _generator(server, "nofinish")
    with pytest.raises(RemoteGeneratorError, match="without finishing the answer"):
        generator.generate(_prompt())


def test_a_slow_server_times_out_after_the_configured_retries(server: FaultServer) -> None:
    generator = _generator(server, "slow:5", request_timeout_s=0.5, max_retries=1)
    started = time.monotonic()
    with pytest.raises(RemoteGeneratorError) as caught:
        generator.generate(_prompt())
    elapsed = time.monotonic() - started
    assert str(caught.value) == (
        f"the generator at {server.base_url} did not answer within 0.5 s (after 1 retries); "
        "raise FOLIO_GENERATOR__REQUEST_TIMEOUT_S or check the server"
    )
    assert len(server.requests("slow:5")) == 2  # the first try and one retry
    assert 1.0 <= elapsed < 4.5  # two timeouts and a backoff, well before the server answers


def test_a_server_gone_silent_mid_answer_times_out(server: FaultServer) -> None:
    generator = _generator(server, "stall:5", request_timeout_s=0.5)
    with pytest.raises(RemoteGeneratorError, match=r"went silent mid-answer for 0\.5 s"):
        generator.generate(_prompt())


def test_rate_limits_are_retried_with_backoff_until_the_answer_comes(
    server: FaultServer,
) -> None:
    model = "busy:2"  # two 429s for this name, then answers
    generator = _generator(server, model, max_retries=2)
    result = generator.generate(_prompt())
    assert result.text == FULL_ANSWER
    assert len(server.requests(model)) == 3
    # Too few retries: the 429 reaches the user as one line with the server's message.
    refused = _generator(server, "busy:1000", max_retries=1)
    with pytest.raises(RemoteGeneratorError) as caught:
        refused.generate(_prompt())
    assert str(caught.value) == (
        f"the generator at {server.base_url} answered HTTP 429: rate limited: slow down "
        "after 1 retries"
    )
    assert len(server.requests("busy:1000")) == 2


def test_server_errors_are_retried_then_reported(server: FaultServer) -> None:
    generator = _generator(server, "error", max_retries=2)
    with pytest.raises(RemoteGeneratorError, match="HTTP 503: the model is overloaded after 2"):
        generator.generate(_prompt())
    assert len(server.requests("error")) == 3


def test_figures_go_as_png_image_parts_when_images_are_on(
    server: FaultServer, tmp_path: Path
) -> None:
    crop = tmp_path / "figure.png"
    Image.new("RGB", (900, 600), (200, 30, 30)).save(crop)  # a stored figure crop
    prompt = build_prompt(
        "What does Figure 3 show?",
        [EVIDENCE[0], Evidence(text="(page 2) Figure 3: accuracy per model", image=crop)],
    )
    model = _name("normal")
    generator = _generator(server, model, images=True)
    assert generator.is_multimodal
    assert generator.generate(prompt).text == FULL_ANSWER  # the server accepted the schema
    (request,) = server.requests(model)
    system, user = request["body"]["messages"]
    assert system["role"] == "system"
    kinds = [part["type"] for part in user["content"]]
    assert kinds == ["text", "image_url", "text"]
    before, image, after = user["content"]
    assert before["text"].endswith("[2] (page 2) Figure 3: accuracy per model\n")
    assert after["text"].strip().endswith("Question: What does Figure 3 show?")
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(url.removeprefix("data:image/png;base64,"))))
    assert png.format == "PNG"
    # Downscaled to the configured pixel limit, aspect kept.
    assert png.width * png.height <= generator.config.max_image_pixels
    assert abs(png.width / png.height - 1.5) < 0.02
    # Off (the default): the figure's text only, the content one string.
    text_model = _name("normal")
    _generator(server, text_model).generate(prompt)
    (plain,) = server.requests(text_model)
    assert isinstance(plain["body"]["messages"][1]["content"], str)
    assert "image_url" not in str(plain["body"])


def test_the_request_schema_refuses_a_malformed_part(server: FaultServer) -> None:
    """The server checks the request against the client's own schema: an image part is
    accepted above because it is well-formed, not because nothing is checked."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="normal",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            stream=True,
        )


def test_the_key_is_sent_but_never_shown(
    server: FaultServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the openai client's and httpx's too
    model = _name("auth")
    generator = _generator(server, model, api_key=KEY)
    assert generator.generate(_prompt()).text == FULL_ANSWER
    assert server.requests(model)[0]["authorization"] == f"Bearer {KEY}"
    shown = [repr(generator.config), str(generator.config), generator.config.model_dump_json()]
    assert all(KEY not in text for text in shown) and "**********" in shown[0]
    # A wrong key: the server's 401 echoes it, the error names the setting and masks the key.
    wrong = "sk-wrong-key-that-must-not-leak-42"
    refused = _generator(server, model, api_key=wrong)
    with pytest.raises(RemoteGeneratorError) as caught:
        refused.generate(_prompt())
    assert wrong not in str(caught.value)
    assert str(caught.value) == (
        f"the generator at {server.base_url} answered HTTP 401: Incorrect API key provided: "
        "***; check FOLIO_GENERATOR__API_KEY (or OPENAI_API_KEY)"
    )
    # The standard environment variable is the fallback.
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    from_env = _generator(server, model)
    assert from_env.generate(_prompt()).text == FULL_ANSWER
    assert server.requests(model)[-1]["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(from_env.config)
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "generator:" in logged  # the load line, so the capture did see these loggers
    assert KEY not in logged and wrong not in logged


def test_no_base_url_or_a_bad_one_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="set FOLIO_GENERATOR__BASE_URL"):
        load_generator(GeneratorConfig(runtime="openai"))
    with pytest.raises(ValueError, match="must be an http"):
        load_generator(GeneratorConfig(runtime="openai", base_url="localhost:8000"))


@pytest.mark.parametrize(
    ("settings", "stage", "named"),
    [
        ({}, "URaG", "URaG"),
        ({}, "REFRAG", "REFRAG"),
        ({"attn_implementation": "folio_sparse"}, "this stage", "folio_sparse"),
    ],
)
def test_stages_that_need_model_internals_say_they_need_a_local_model(
    settings: dict, stage: str, named: str
) -> None:
    config = GeneratorConfig(runtime="openai", base_url="http://127.0.0.1:9/v1", **settings)
    needs = stage != "this stage"
    with pytest.raises(ValueError) as caught:
        select_runtime(config, needs_internals=needs, stage=stage)
    message = str(caught.value)
    assert named in message and "needs a local torch model" in message and "\n" not in message
    plain = GeneratorConfig(runtime="openai", base_url="http://127.0.0.1:9/v1")
    assert select_runtime(plain).runtime is GeneratorRuntime.OPENAI


def test_the_model_cache_never_switches_a_remote_generator_to_torch() -> None:
    from pipeline.answering.cache import with_runtime_for
    from pipeline.config import AnswerConfig

    remote = GeneratorConfig(runtime="openai", base_url="http://127.0.0.1:9/v1")
    assert with_runtime_for(AnswerConfig(), remote) is remote
    for stage in ({"use_urag": True}, {"use_refrag": True}):
        with pytest.raises(ValueError, match="needs a local torch model"):
            with_runtime_for(AnswerConfig(**stage), remote)


def test_model_internals_are_refused_by_the_generator_itself(server: FaultServer) -> None:
    generator = _generator(server, "normal")
    with pytest.raises(AttributeError, match="needs a local torch model"):
        generator.model  # noqa: B018
    with pytest.raises(RuntimeError, match="needs a local torch model"):
        generator.new_cache()
    with pytest.raises(ValueError, match="needs a local torch model"):
        generator.stream(_prompt(), runner=object())
    with pytest.raises(ValueError, match="completion"):
        _generator(server, "normal", prompt_style="completion")


def test_approximate_token_counts_track_a_real_tokenizer() -> None:
    """For a remote model whose tokenizer Folio lacks: close to Qwen2.5's count on prose,
    numbers and a table row (the BENCHMARKS-style figures are in ApproxTokenizer's docstring)."""
    approx = ApproxTokenizer()
    text = "The revenue in 2023 was 4.2 billion dollars | Q1 | 1,024 | 3.5% |"
    ids = approx(text)["input_ids"]
    words = re.findall(r"[A-Za-z]+", text)
    digits = re.findall(r"\d", text)
    assert len(ids) >= len(words) + len(digits)
    assert approx("")["input_ids"] == []
    assert approx("internationalization")["input_ids"].__len__() == 4  # 20 letters / 6
    assert "<|im_start|>" in approx.all_special_tokens  # defused in quoted evidence
