"""The answering language model: load, render the prompt, prefill, decode, stream.

Typical use (the pipeline):

    gen = load_generator(GeneratorConfig(), cache_dir=library / "models")
    prompt = build_prompt(question, evidence_texts, instructions=...)
    stream = gen.stream(prompt)
    for delta in stream:        # text deltas as they are decoded
        ...
    stream.result               # Generation: text, stop reason, token counts, TTFT, tokens/s

Generation follows gpt-fast's split: `prefill` (whole prompt, logits of the last position only),
`decode_step` (one token against the KV cache) and `stream`/`generate` (the loop with stop
conditions). `prefill` also takes `inputs_embeds` (REFRAG feeds chunk embeddings), and `model`,
`tokenizer` and `embed_tokens` are exposed for layer-wise execution (URaG).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jinja2.exceptions import TemplateError

from models._decoding import StopReason, StopTextTracker, select_next_token
from models._packaged import PACKAGED_MODELS, ModelSourceError, resolve_model_dir
from models._prompt import EVIDENCE_IS_DATA, Evidence, Prompt, build_prompt, defuse, load_image
from models.config import DeviceChoice, DTypeChoice, GeneratorConfig, PromptStyle

logger = logging.getLogger(__name__)

__all__ = [
    "EVIDENCE_IS_DATA",
    "PACKAGED_GENERATORS",
    "Evidence",
    "Generation",
    "GenerationStream",
    "Generator",
    "ModelSourceError",
    "Prompt",
    "PromptInputs",
    "StopReason",
    "build_prompt",
    "defuse",
    "load_generator",
]

PACKAGED_GENERATORS: tuple[str, ...] = tuple(PACKAGED_MODELS)
"""Names accepted by `GeneratorConfig.model` besides a local path."""

# Chat models end a turn with one of these; generation_config often lists only <|endoftext|>.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class PromptInputs:
    """A rendered, tokenised prompt: what `prefill` consumes.

    Exactly one of `input_ids` and `inputs_embeds` is set.

    Attributes:
        input_ids: `[B, T]` token ids.
        inputs_embeds: `[B, T, D]` input embeddings, in the space of `Generator.embed_tokens`
            (for Gemma that space includes the sqrt(hidden) scale).
        attention_mask: `[B, T]`, or None for an unpadded batch.
        model_kwargs: Extra forward inputs for the prefill only (a VLM's `pixel_values`,
            `image_grid_thw`, `mm_token_type_ids`, ...).
        text: The rendered prompt text ("" when built from embeddings).
    """

    input_ids: torch.Tensor | None = None
    inputs_embeds: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    text: str = ""

    def __post_init__(self) -> None:
        if (self.input_ids is None) == (self.inputs_embeds is None):
            raise ValueError("PromptInputs needs exactly one of input_ids and inputs_embeds")

    @property
    def num_tokens(self) -> int:
        """Prompt length T (image tokens included)."""
        return int(self._source.shape[1])

    @property
    def batch_size(self) -> int:
        """Batch size B."""
        return int(self._source.shape[0])

    @property
    def _source(self) -> torch.Tensor:
        return self.input_ids if self.input_ids is not None else self.inputs_embeds


@dataclass(frozen=True)
class Generation:
    """One finished answer with what it cost.

    Attributes:
        text: The answer, stripped, without the stop string or newline that ended it.
        stop_reason: Why decoding ended.
        prompt_tokens: Prompt length in tokens.
        new_tokens: Tokens sampled (including an EOS token that ended the answer).
        ttft_s: Time to first token: rendering, tokenising, prefill and the first pick.
        prefill_s: Seconds in the prefill forward pass.
        decode_s: Seconds in decode steps (every token after the first).
    """

    text: str
    stop_reason: StopReason
    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    prefill_s: float
    decode_s: float

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens processed per second of prefill."""
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second (the first token comes from the prefill)."""
        steps = self.new_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


class GenerationStream:
    """Iterator over text deltas of one answer; `result` is set once it is exhausted."""

    def __init__(self, deltas: Iterator[str]) -> None:
        self._deltas = deltas
        self._result: Generation | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._deltas)
        except StopIteration as stop:
            self._result = stop.value
            raise

    @property
    def result(self) -> Generation:
        """The finished `Generation`.

        Raises:
            RuntimeError: If the stream has not been consumed to the end.
        """
        if self._result is None:
            raise RuntimeError("consume the stream before reading .result (e.g. list(stream))")
        return self._result


class Generator:
    """A loaded causal LM (or vision-language model) with its tokenizer or processor.

    Build one with `load_generator`; the constructor takes already-loaded objects (tests, or a
    caller that loads its own model).

    Args:
        model: A transformers causal LM or image-text-to-text model, in eval mode.
        tokenizer: Its tokenizer.
        config: Decoding defaults and prompt style.
        processor: The multimodal processor for a vision-language model, else None.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: GeneratorConfig | None = None,
        *,
        processor: Any | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.config = config or GeneratorConfig()
        self.style = self._resolve_style(self.config.prompt_style)
        self.eos_token_ids = self._eos_ids()

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where prompts go)."""
        return self.model.get_input_embeddings().weight.device

    @functools.cached_property
    def control_tokens(self) -> tuple[str, ...]:
        """Strings the tokenizer turns into control tokens wherever they appear in text
        (`<|im_start|>`, `<end_of_turn>`, ...): what `defuse` rewrites in quoted evidence."""
        tokenizer = self.tokenizer
        found = set(getattr(tokenizer, "all_special_tokens", []))
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        found.update(t.content for t in decoder.values() if len(t.content) > 1)
        return tuple(sorted(t for t in found if t and not t.isspace()))

    @property
    def is_multimodal(self) -> bool:
        """Whether evidence images reach the model (a VLM with a processor)."""
        return self.processor is not None

    # ----------------------------------------------------------------------------- prompts

    def render(self, prompt: Prompt) -> str:
        """Render `prompt` as the text the model reads (chat template or completion style)."""
        if self.style is PromptStyle.COMPLETION:
            if self.is_multimodal and prompt.images:
                raise ValueError(
                    "evidence images need the chat template of a vision-language model; "
                    'set prompt_style="chat" or send the figures as text'
                )
            return prompt.completion()
        with_images = self.is_multimodal
        owner = self.processor if with_images else self.tokenizer
        try:
            return owner.apply_chat_template(
                prompt.messages(with_images=with_images),
                tokenize=False,
                add_generation_prompt=True,
            )
        except TemplateError as exc:
            if "system" not in str(exc).lower():
                raise
            # NOTE: some templates (Gemma 2, Mistral) reject a system turn; fold it into the user's.
            return owner.apply_chat_template(
                prompt.messages(with_images=with_images, system_role=False),
                tokenize=False,
                add_generation_prompt=True,
            )

    def encode(self, prompt: Prompt | str) -> PromptInputs:
        """Render and tokenise a prompt.

        Args:
            prompt: A `Prompt` (rendered in the model's style), or a `str` used verbatim as the
                already-rendered prompt text.

        Returns:
            `PromptInputs` on the model's device, batch size 1.
        """
        if isinstance(prompt, str):
            text, images = prompt, []
        elif isinstance(prompt, Prompt):
            text = self.render(prompt)
            images = prompt.images if self.is_multimodal else []
        else:
            raise TypeError(f"prompt must be a Prompt or str, got {type(prompt).__name__}")
        # Chat templates write their own BOS; completion text gets the tokenizer's.
        add_special = self.style is PromptStyle.COMPLETION or isinstance(prompt, str)
        if images:
            pictures = [self._fit_image(load_image(image)) for image in images]
            batch = self.processor(
                text=[text], images=pictures, return_tensors="pt", add_special_tokens=False
            )
        else:
            batch = self.tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
        batch = {k: self._to_model(v) for k, v in batch.items()}
        input_ids = batch.pop("input_ids")
        attention_mask = batch.pop("attention_mask", None)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        extras = {k: v for k, v in batch.items() if v is not None}
        if not images:
            extras.pop("token_type_ids", None)
            extras.pop("mm_token_type_ids", None)
        return PromptInputs(
            input_ids=input_ids, attention_mask=attention_mask, model_kwargs=extras, text=text
        )

    @torch.no_grad()
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids, `[B, T] -> [B, T, D]`, as `prefill` would compute them."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    # ---------------------------------------------------------------------------- decoding

    def new_cache(self) -> Any:
        """An empty KV cache for one prompt (sliding-window layers where the config has them)."""
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config.get_text_config(decoder=True))

    @torch.no_grad()
    def prefill(
        self, inputs: PromptInputs, *, cache: Any | None = None, **forward_kwargs: Any
    ) -> tuple[torch.Tensor, Any]:
        """Run the whole prompt and return the next-token logits.

        Args:
            inputs: From `encode`, or built from embeddings (`PromptInputs(inputs_embeds=...)`).
            cache: A KV cache to fill (e.g. a compressing `Cache` subclass); a fresh
                `new_cache()` when None.
            **forward_kwargs: Passed to the model's forward for this prefill only; an attention
                backend such as "folio_sparse" reads its options from them.

        Returns:
            `([B, V]` logits of the last position, the filled cache). Only the last position
            goes through the LM head (`logits_to_keep=1`), which saves memory and time.
        """
        cache = self.new_cache() if cache is None else cache
        self._reset_position_state()
        out = self.model(
            input_ids=inputs.input_ids,
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **inputs.model_kwargs,
            **forward_kwargs,
        )
        # logits: [B, 1, V]
        return out.logits[:, -1, :], out.cache

    @torch.no_grad()
    def decode_step(
        self, tokens: torch.Tensor, cache: Any, *, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Feed one token per row against the cache.

        Args:
            tokens: `[B]` or `[B, 1]` token ids.
            cache: The cache from `prefill` (updated in place).
            attention_mask: `[B, S + 1]` over cache and new token, for a padded batch only.

        Returns:
            `[B, V]` next-token logits.
        """
        tokens = tokens.reshape(-1, 1).to(self.device)
        out = self.model(
            input_ids=tokens,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def stream(
        self,
        prompt: Prompt | str | PromptInputs,
        *,
        max_new_tokens: int | None = None,
        stop_strings: tuple[str, ...] | None = None,
        stop_at_newline: bool | None = None,
        temperature: float | None = None,
        cache: Any | None = None,
        prefill_kwargs: Mapping[str, Any] | None = None,
        runner: Any | None = None,
    ) -> GenerationStream:
        """Generate an answer as a stream of text deltas.

        Args:
            prompt: A `Prompt`, already-rendered text, or `PromptInputs` (e.g. embeddings).
            max_new_tokens: Token budget (default: config).
            stop_strings: Strings that end the answer (default: config).
            stop_at_newline: End at the first newline after the answer starts (default: config).
            temperature: 0 for greedy (default: config, which is greedy).
            cache: The KV cache to use (default: a fresh `new_cache()`).
            prefill_kwargs: Extra forward kwargs for the prefill (see `prefill`).
            runner: Runs the model instead of this generator: an object with this class's
                `prefill(inputs, cache=..., **kwargs)` and `decode_step(tokens, cache)` (URaG's
                pruned prefill, `models.urag.UragRunner`). None: `self`.

        Returns:
            A `GenerationStream`: iterate for deltas, then read `.result`. Nothing runs until
            the first `next()`, so TTFT covers tokenising and prefill.
        """
        cfg = self.config
        budget = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        if budget < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {budget}")
        return GenerationStream(
            self._run(
                prompt,
                max_new_tokens=budget,
                stop_strings=cfg.stop_strings if stop_strings is None else tuple(stop_strings),
                stop_at_newline=cfg.stop_at_newline if stop_at_newline is None else stop_at_newline,
                temperature=cfg.temperature if temperature is None else temperature,
                cache=cache,
                prefill_kwargs=dict(prefill_kwargs or {}),
                runner=runner if runner is not None else self,
            )
        )

    def generate(
        self,
        prompt: Prompt | str | PromptInputs,
        *,
        max_new_tokens: int | None = None,
        stop_strings: tuple[str, ...] | None = None,
        stop_at_newline: bool | None = None,
        temperature: float | None = None,
        cache: Any | None = None,
        prefill_kwargs: Mapping[str, Any] | None = None,
        runner: Any | None = None,
    ) -> Generation:
        """`stream` consumed to the end: the same arguments, the finished `Generation`."""
        stream = self.stream(
            prompt,
            max_new_tokens=max_new_tokens,
            stop_strings=stop_strings,
            stop_at_newline=stop_at_newline,
            temperature=temperature,
            cache=cache,
            prefill_kwargs=prefill_kwargs,
            runner=runner,
        )
        for _ in stream:
            pass
        return stream.result

    @torch.no_grad()
    def _run(
        self,
        prompt: Prompt | str | PromptInputs,
        *,
        max_new_tokens: int,
        stop_strings: tuple[str, ...],
        stop_at_newline: bool,
        temperature: float,
        cache: Any | None,
        prefill_kwargs: dict[str, Any],
        runner: Any,
    ) -> Iterator[str]:
        """The decode loop behind `stream`: yields deltas, returns the `Generation`."""
        start = time.perf_counter()
        inputs = prompt if isinstance(prompt, PromptInputs) else self.encode(prompt)
        if inputs.num_tokens == 0:
            raise ValueError("the prompt is empty after tokenisation")
        limit = getattr(
            self.model.config.get_text_config(decoder=True), "max_position_embeddings", 0
        )
        if limit and inputs.num_tokens + max_new_tokens > limit:
            logger.warning(
                "prompt of %d tokens + %d new exceeds the model's %d positions; expect degraded "
                "answers (cut the evidence budget)",
                inputs.num_tokens,
                max_new_tokens,
                limit,
            )
        if inputs.batch_size != 1:
            raise ValueError(f"stream/generate take one prompt (batch 1), got {inputs.batch_size}")
        sampler = None
        if temperature > 0:
            sampler = torch.Generator(device="cpu").manual_seed(self.config.seed)
        tracker = StopTextTracker(stop_strings, stop_at_newline=stop_at_newline)

        t0 = time.perf_counter()
        logits, cache = runner.prefill(inputs, cache=cache, **prefill_kwargs)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)  # kernels run async: time the real prefill
        prefill_s = time.perf_counter() - t0
        tokens: list[int] = []
        reason: StopReason | None = None
        ttft_s = 0.0
        decode_s = 0.0
        while True:
            token = select_next_token(
                logits, temperature=temperature, top_p=self.config.top_p, generator=sampler
            )
            if not tokens:
                ttft_s = time.perf_counter() - start
            tokens.append(int(token[0]))
            if tokens[-1] in self.eos_token_ids:
                reason = StopReason.EOS
                delta = tracker.finish(self._decode(tokens[:-1]))
            else:
                delta, reason = tracker.update(self._decode(tokens))
                if reason is None and len(tokens) >= max_new_tokens:
                    reason = StopReason.MAX_NEW_TOKENS
                    delta += tracker.finish(self._decode(tokens))
            if delta:
                yield delta
            if reason is not None:
                break
            t1 = time.perf_counter()
            logits = runner.decode_step(token, cache)
            decode_s += time.perf_counter() - t1
        return Generation(
            text=tracker.shown,
            stop_reason=reason,
            prompt_tokens=inputs.num_tokens,
            new_tokens=len(tokens),
            ttft_s=ttft_s,
            prefill_s=prefill_s,
            decode_s=decode_s,
        )

    # ----------------------------------------------------------------------------- helpers

    def _decode(self, tokens: list[int]) -> str:
        """Text of generated tokens, special tokens dropped, no space clean-up."""
        return self.tokenizer.decode(
            tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _resolve_style(self, style: PromptStyle) -> PromptStyle:
        """AUTO becomes CHAT when a chat template exists, else COMPLETION."""
        owner = self.processor if self.processor is not None else self.tokenizer
        has_template = bool(getattr(owner, "chat_template", None)) or bool(
            getattr(self.tokenizer, "chat_template", None)
        )
        if style is PromptStyle.AUTO:
            return PromptStyle.CHAT if has_template else PromptStyle.COMPLETION
        if style is PromptStyle.CHAT and not has_template:
            raise ValueError(
                'prompt_style="chat" but the model has no chat template; use "completion" '
                '(base models) or "auto"'
            )
        return style

    def _eos_ids(self) -> frozenset[int]:
        """End-of-sequence ids: generation config, tokenizer, and end-of-turn tokens in chat style."""
        ids: set[int] = set()
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(int(i) for i in configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        if self.style is PromptStyle.CHAT:
            vocab = self.tokenizer.get_vocab()
            ids.update(vocab[name] for name in _END_OF_TURN_TOKENS if name in vocab)
        if not ids:
            logger.warning("the model defines no end-of-sequence token; answers end by budget")
        return frozenset(ids)

    def _to_model(self, value: Any) -> Any:
        """Move a tensor to the model's device; float inputs (pixels) also take its dtype."""
        if not torch.is_tensor(value):
            return value
        if value.is_floating_point():
            return value.to(self.device, dtype=self.model.dtype)
        return value.to(self.device)

    def _fit_image(self, image: Any) -> Any:
        """Downscale a PIL image to at most `config.max_image_pixels` pixels."""
        limit = self.config.max_image_pixels
        width, height = image.size
        if width * height <= limit:
            return image
        scale = (limit / (width * height)) ** 0.5
        return image.resize((max(1, int(width * scale)), max(1, int(height * scale))))

    def _reset_position_state(self) -> None:
        """Forget per-prompt position state (Qwen2-VL's M-RoPE deltas) before a new prefill."""
        # NOTE: Qwen2-VL caches `rope_deltas` on the module at prefill and reuses it in decode;
        # HF `generate` recomputes it per call, so a new prompt must not inherit the last one's.
        for module in self.model.modules():
            if getattr(module, "rope_deltas", None) is not None:
                module.rope_deltas = None


def load_generator(
    config: GeneratorConfig | None = None, *, cache_dir: Path | None = None
) -> Generator:
    """Load the configured model, converting a packaged GGUF once into `cache_dir`.

    Args:
        config: Which model and how to decode; defaults to `GeneratorConfig()`
            (Qwen2.5-Coder-0.5B-Instruct).
        cache_dir: Folder for converted models (the library's `models/`). Required for packaged
            models and `.gguf` paths; a Hugging Face folder loads in place.

    Returns:
        A ready `Generator`.

    Raises:
        ValueError: Unknown model name or path, or no cache_dir where one is needed.
        ModelSourceError: Packaged parts missing, of the wrong version, or failing their
            checksum (the message names the pip command that fixes it), or unreadable weights.
    """
    from transformers import AutoConfig

    config = config or GeneratorConfig()
    start = time.perf_counter()
    from models.attention import BACKEND_NAME, register_sparse_attention

    if config.attn_implementation == BACKEND_NAME:
        # transformers only knows backends registered before the model is built
        register_sparse_attention()
    folder = resolve_model_dir(config.model, cache_dir)
    device_map, dtype = _placement(config)
    try:
        model_config = AutoConfig.from_pretrained(
            folder, trust_remote_code=config.trust_remote_code
        )
        common = {
            "dtype": dtype,
            "device_map": device_map,
            "attn_implementation": config.attn_implementation,
            "trust_remote_code": config.trust_remote_code,
        }
        if _is_vision_language(model_config):
            from transformers import AutoModelForImageTextToText, AutoProcessor

            processor = AutoProcessor.from_pretrained(
                folder, trust_remote_code=config.trust_remote_code
            )
            tokenizer = processor.tokenizer
            model = AutoModelForImageTextToText.from_pretrained(folder, **common)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            processor = None
            tokenizer = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=config.trust_remote_code
            )
            model = AutoModelForCausalLM.from_pretrained(folder, **common)
    except (OSError, ValueError, KeyError) as exc:
        hint = ""
        if cache_dir is not None and Path(cache_dir) in folder.parents:
            hint = f" (a converted copy: delete {folder} to convert it again)"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"could not load model from {folder}: {first_line}{hint}") from exc
    generator = Generator(model, tokenizer, config, processor=processor)
    logger.info(
        "loaded %s from %s in %.1f s (%s, %s, %s prompts)",
        config.model,
        folder,
        time.perf_counter() - start,
        generator.device,
        dtype,
        generator.style,
    )
    return generator


def _placement(config: GeneratorConfig) -> tuple[str, torch.dtype]:
    """(device_map, dtype) for `from_pretrained`."""
    cuda = torch.cuda.is_available()
    if config.device is DeviceChoice.CUDA and not cuda:
        raise ValueError('device="cuda" but no CUDA device is available; use "auto" or "cpu"')
    on_cuda = config.device is DeviceChoice.CUDA or (config.device is DeviceChoice.AUTO and cuda)
    # "auto" spreads a large model over every visible GPU (accelerate); "cuda" uses one.
    device_map = (
        "cpu" if not on_cuda else ("auto" if config.device is DeviceChoice.AUTO else "cuda")
    )
    if config.dtype is DTypeChoice.AUTO:
        dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
        if on_cuda and dtype is torch.float32:
            dtype = torch.float16
    else:
        dtype = getattr(torch, config.dtype.value)
    return device_map, dtype


def _is_vision_language(model_config: Any) -> bool:
    """Whether a config describes an image-text-to-text model (has a vision tower)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return (
        model_config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        and getattr(model_config, "vision_config", None) is not None
    )
