"""One interface, two runtimes: the same tests on the torch `Generator` (a tiny random Qwen2, fast)
and the `OpenVinoGenerator` (the packaged Qwen2.5-Coder-0.5B, slow: a one-time Q8_0 conversion
and a model load), plus the OpenVINO streamer's stop and cancel mechanics on a scripted pipeline
(fast, no model)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from models._decoding import StopReason
from models._generation import GeneratorBase, PromptInputs
from models.config import GeneratorConfig
from models.generator import Generator, build_prompt, load_generator

ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = ROOT / "folio-library" / "models"
EVIDENCE = [
    "The revenue in 2023 was 4.2 billion dollars, up from 3.9 billion in 2022.",
    "Figure 3 shows the accuracy of each model on the test set.",
]


@pytest.fixture(
    scope="module",
    params=[
        "torch",
        pytest.param("openvino", marks=pytest.mark.slow),
    ],
)
def generator(request: pytest.FixtureRequest, tiny_lm_dir: Path) -> GeneratorBase:
    """The torch runtime on the tiny model, or the openvino runtime on the packaged 0.5B."""
    if request.param == "torch":
        config = GeneratorConfig(model=str(tiny_lm_dir), device="cpu")
        loaded = load_generator(config)
    else:
        config = GeneratorConfig(runtime="openvino", prefix_cache=False)
        loaded = load_generator(config, cache_dir=MODEL_CACHE)
    assert loaded.runtime == request.param
    return loaded


def _prompt() -> Any:
    return build_prompt("What was the revenue in 2023?", EVIDENCE)


def _unbounded(generator: GeneratorBase, budget: int = 12) -> Any:
    """A greedy answer that only the budget ends (no newline, no stop string, no EOS)."""
    saved = generator.eos_token_ids
    generator.eos_token_ids = frozenset()
    try:
        return generator.generate(_prompt(), max_new_tokens=budget, stop_at_newline=False)
    finally:
        generator.eos_token_ids = saved


def test_the_interface_the_answering_path_uses(generator: GeneratorBase) -> None:
    prompt = _prompt()
    text = generator.render(prompt)
    assert "<|im_start|>assistant" in text and EVIDENCE[0] in text
    inputs = generator.encode(prompt)
    expected = generator.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert inputs.input_ids[0].tolist() == expected
    assert "<|im_start|>" in generator.control_tokens
    assert generator.eos_token_ids and not generator.is_multimodal
    assert str(generator.device) == "cpu"


def test_stream_deltas_join_to_the_answer_and_stats_are_filled(generator: GeneratorBase) -> None:
    told: list[int] = []
    stream = generator.stream(_prompt(), max_new_tokens=8, on_prefill=told.append)
    deltas = list(stream)
    result = stream.result
    assert "".join(deltas) == result.text
    assert told == [result.prompt_tokens] == [generator.encode(_prompt()).num_tokens]
    assert 1 <= result.new_tokens <= 8
    assert 0 < result.prefill_s <= result.ttft_s
    assert result.decode_s >= 0 and result.prefill_tokens_per_s > 0
    assert result.stop_reason in set(StopReason)


def test_greedy_is_deterministic_and_the_budget_ends_the_answer(generator: GeneratorBase) -> None:
    first, second = _unbounded(generator), _unbounded(generator)
    assert first.text == second.text
    assert first.stop_reason is StopReason.MAX_NEW_TOKENS and first.new_tokens == 12
    assert first.decode_tokens_per_s > 0


def test_a_stop_string_cuts_the_answer_before_it(generator: GeneratorBase) -> None:
    full = _unbounded(generator).text
    assert len(full) >= 4
    stop = full[2:4]
    expected = full[: full.index(stop)].rstrip()
    saved = generator.eos_token_ids
    generator.eos_token_ids = frozenset()
    try:
        cut = generator.generate(
            _prompt(), max_new_tokens=12, stop_at_newline=False, stop_strings=(stop,)
        )
    finally:
        generator.eos_token_ids = saved
    assert cut.stop_reason is StopReason.STOP_STRING and cut.text == expected


def test_closing_the_stream_early_stops_generating(generator: GeneratorBase) -> None:
    stream = generator.stream(_prompt(), max_new_tokens=64, stop_at_newline=False)
    next(iter(stream))
    stream._deltas.close()  # what the web app's Stop does to the answer's generator
    assert not [t for t in threading.enumerate() if t.name == "openvino-generate"]
    with pytest.raises(RuntimeError, match="consume the stream"):
        _ = stream.result
    assert generator.generate(_prompt(), max_new_tokens=2).new_tokens <= 2  # usable again


# ------------------------------------------- the OpenVINO streamer on a scripted pipeline


class _ScriptedPipeline:
    """Stands in for `openvino_genai.LLMPipeline.generate`: streams fixed tokens, obeys the
    streamer's status like the real one (one token at a time, stops on STOP or CANCEL)."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.written = 0
        self.permits: threading.Semaphore | None = None  # set: one permit per token

    def generate(self, inputs: Any, config: Any, streamer: Any) -> None:
        import openvino_genai as ov_genai

        assert config.ignore_eos  # every end rule is the streamer's
        for token in self.tokens[: config.max_new_tokens]:
            if self.permits is not None:
                assert self.permits.acquire(timeout=5)
            self.written += 1
            if streamer.write([token]) != ov_genai.StreamingStatus.RUNNING:
                break
        streamer.end()


@pytest.fixture(scope="module")
def scripted(tiny_lm_dir: Path) -> Any:
    pytest.importorskip("openvino_genai")
    from transformers import AutoTokenizer

    from models.openvino_generator import OpenVinoGenerator

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)

    def make(text: str) -> tuple[OpenVinoGenerator, _ScriptedPipeline]:
        pipeline = _ScriptedPipeline(tokenizer(text, add_special_tokens=False)["input_ids"])
        return OpenVinoGenerator(pipeline, tokenizer, GeneratorConfig()), pipeline

    return make


def test_the_streamer_applies_the_same_stop_rules(scripted: Any) -> None:
    generator, pipeline = scripted("4.2 billion\nTable 2 lists the results.")
    result = generator.generate("q")
    assert result.text == "4.2 billion" and result.stop_reason is StopReason.NEWLINE
    assert pipeline.written == result.new_tokens  # stopped at the newline's token
    generator, _ = scripted("4.2 billion<|im_end|>Table 2")
    result = generator.generate("q")
    assert result.text == "4.2 billion" and result.stop_reason is StopReason.EOS
    generator, _ = scripted("The revenue in 2023 was 4.2 billion dollars")
    result = generator.generate("q", max_new_tokens=3)
    assert result.new_tokens == 3 and result.stop_reason is StopReason.MAX_NEW_TOKENS
    # The runtime ran out first while "Table" was held back as a possible start of "Table 9".
    generator, _ = scripted("The revenue Table")
    stream = generator.stream("q", max_new_tokens=30, stop_strings=("Table 9",))
    assert "".join(stream) == stream.result.text == "The revenue Table"
    assert stream.result.stop_reason is StopReason.EOS


def test_closing_the_stream_cancels_the_generation(scripted: Any) -> None:
    generator, pipeline = scripted(" ".join(["revenue"] * 40))
    pipeline.permits = threading.Semaphore(3)
    stream = generator.stream("q", stop_at_newline=False, max_new_tokens=500)
    assert next(iter(stream))
    closer = threading.Thread(target=stream._deltas.close)
    closer.start()
    pipeline.permits.release(10)
    closer.join(10)
    assert not closer.is_alive()
    assert pipeline.written <= 4 < len(pipeline.tokens)  # cancelled at the next token


def test_torch_only_requests_fail_in_one_line_naming_the_fix(scripted: Any) -> None:
    generator, _ = scripted("x")
    for call in (
        lambda: generator.stream("q", runner=object()),
        lambda: generator.stream("q", cache=object()),
        lambda: generator.stream(PromptInputs(inputs_embeds=_embeds())),
        lambda: generator.prefill(generator.encode("q")),
        lambda: generator.embed_tokens(None),
        lambda: generator.model,
    ):
        with pytest.raises((ValueError, RuntimeError, AttributeError)) as info:
            call()
        assert "--runtime torch" in str(info.value) and "\n" not in str(info.value)


def _embeds() -> Any:
    import torch

    return torch.zeros(1, 2, 4)


def test_a_tiny_local_model_resolves_to_torch_on_auto(tiny_lm_dir: Path) -> None:
    loaded = load_generator(GeneratorConfig(model=str(tiny_lm_dir), device="cpu"))
    assert isinstance(loaded, Generator) and loaded.runtime == "torch"
