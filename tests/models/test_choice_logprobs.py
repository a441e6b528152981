"""Scoring a follow-up question's answer words (`choice_logprobs`, `follow_up`): on the torch
runtime the prompt's KV cache from the answer's own stream serves the follow-up, so only the
suffix runs and the scores equal a fresh pass over the whole sequence (tiny random Qwen2, fast);
on the openvino runtime (packaged 0.5B, slow) the forced-token scores agree with the greedy pick."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models.config import GeneratorConfig
from models.generator import Generator, build_prompt, load_generator

ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = ROOT / "folio-library" / "models"
QUESTION = "Does the evidence state the answer to the question? Reply yes or no."
EVIDENCE = ["The revenue in 2023 was 4.2 billion dollars, up from 3.9 billion in 2022."]


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir: Path) -> Generator:
    return load_generator(GeneratorConfig(model=str(tiny_lm_dir), device="cpu"))


def test_follow_up_continues_the_rendered_prompt(tiny: Generator) -> None:
    prompt = build_prompt("What was the revenue in 2023?", EVIDENCE)
    suffix = tiny.follow_up(prompt, "4.2 billion", QUESTION)
    rendered = tiny.render(prompt)
    assert suffix.startswith("4.2 billion")
    assert QUESTION in suffix
    # The whole conversation is the prompt plus the suffix, ending where the model speaks.
    assert (rendered + suffix).endswith(rendered[rendered.rindex("<|im_start|>") :])


def test_the_stream_cache_serves_the_follow_up_and_scores_match_a_fresh_pass(
    tiny: Generator,
) -> None:
    torch.manual_seed(0)
    prompt = build_prompt("What was the revenue in 2023?", EVIDENCE)
    inputs = tiny.encode(prompt)
    cache = tiny.new_cache()
    answer = tiny.generate(inputs, max_new_tokens=5, stop_at_newline=False, cache=cache)
    assert cache.get_seq_length() > inputs.num_tokens  # the reply is in the cache too
    suffix = tiny.follow_up(prompt, answer.text or "yes", QUESTION)
    suffix_tokens = len(tiny.tokenizer(suffix, add_special_tokens=False)["input_ids"])

    reused = tiny.choice_logprobs(inputs, suffix, ("Yes", "No"), cache=cache)
    fresh = tiny.choice_logprobs(inputs, suffix, ("Yes", "No"))

    assert reused.fed_tokens == suffix_tokens  # only the suffix ran
    assert fresh.fed_tokens == inputs.num_tokens + suffix_tokens
    assert reused.total_tokens == fresh.total_tokens == inputs.num_tokens + suffix_tokens
    torch.testing.assert_close(
        torch.tensor(reused.logprobs), torch.tensor(fresh.logprobs), atol=1e-4, rtol=1e-4
    )
    assert all(lp < 0 for lp in reused.logprobs)
    assert sum(math.exp(lp) for lp in reused.logprobs) <= 1.0 + 1e-6


def test_bad_inputs_are_refused(tiny: Generator) -> None:
    inputs = tiny.encode(build_prompt("What was the revenue in 2023?", EVIDENCE))
    with pytest.raises(ValueError, match="suffix"):
        tiny.choice_logprobs(inputs, "", ("Yes",))
    with pytest.raises(ValueError, match="no tokens"):
        tiny.choice_logprobs(inputs, "x", ("",))


@pytest.mark.slow
def test_openvino_forced_scores_agree_with_the_greedy_pick() -> None:
    generator = load_generator(GeneratorConfig(runtime="openvino"), cache_dir=MODEL_CACHE)
    prompt = build_prompt("What was the revenue in 2023?", EVIDENCE)
    inputs = generator.encode(prompt)
    suffix = generator.follow_up(prompt, "4.2 billion dollars", QUESTION)
    scores = generator.choice_logprobs(inputs, suffix, ("Yes", "No"))
    assert all(lp < 0 for lp in scores.logprobs)
    assert sum(math.exp(lp) for lp in scores.logprobs) <= 1.0 + 1e-3
    greedy = generator.generate(
        generator.encode(generator.render(prompt) + suffix), max_new_tokens=1
    )
    if greedy.text in ("Yes", "No"):
        best = ("Yes", "No")[scores.logprobs.index(max(scores.logprobs))]
        assert greedy.text == best
