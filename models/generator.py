"""The answering language model: load, render the prompt, prefill, decode, stream.

Typical use (the pipeline):

    gen = load_generator(GeneratorConfig(), cache_dir=library / "models")
    prompt = build_prompt(question, evidence_texts, instructions=...)
    stream = gen.stream(prompt)
    for delta in stream:        # text deltas as they are decoded
        ...
    stream.result               # Generation: text, stop reason, token counts, TTFT, tokens/s

`load_generator` picks the runtime (`models.runtime.select_runtime`): OpenVINO GenAI for the
packaged Qwen models on CPU (`models.openvino_generator`), torch (this module's `Generator`)
elsewhere. Both share the tokenizer side (`models._generation.GeneratorBase`) and the stop rules.

The torch generator follows gpt-fast's split: `prefill` (whole prompt, logits of the last position
only), `decode_step` (one token against the KV cache) and `stream`/`generate` (the loop with stop
conditions). `prefill` also takes `inputs_embeds` (REFRAG feeds chunk embeddings), and `model`,
`tokenizer` and `embed_tokens` are exposed for layer-wise execution (URaG).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from models._decoding import AnswerTokens, StopReason, select_next_token
from models._generation import (
    ChoiceScores,
    Generation,
    GenerationStream,
    GeneratorBase,
    PromptInputs,
)
from models._packaged import PACKAGED_MODELS, ModelSourceError, resolve_model_dir
from models._prompt import EVIDENCE_IS_DATA, Evidence, Prompt, build_prompt, defuse
from models.config import DeviceChoice, DTypeChoice, GeneratorConfig, GeneratorRuntime
from models.runtime import select_runtime

logger = logging.getLogger(__name__)

__all__ = [
    "EVIDENCE_IS_DATA",
    "ChoiceScores",
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


class Generator(GeneratorBase):
    """A loaded causal LM (or vision-language model) with its tokenizer or processor, on torch.

    Build one with `load_generator`; the constructor takes already-loaded objects (tests, or a
    caller that loads its own model).

    Args:
        model: A transformers causal LM or image-text-to-text model, in eval mode.
        tokenizer: Its tokenizer.
        config: Decoding defaults and prompt style.
        processor: The multimodal processor for a vision-language model, else None.
    """

    runtime = "torch"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: GeneratorConfig | None = None,
        *,
        processor: Any | None = None,
    ) -> None:
        self.model = model.eval()
        super().__init__(tokenizer, config, processor=processor)
        self.eos_token_ids = self._eos_ids()

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where prompts go)."""
        return self.model.get_input_embeddings().weight.device

    # ----------------------------------------------------------------------------- prompts

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

    @torch.no_grad()
    def choice_logprobs(
        self, inputs: PromptInputs, suffix: str, choices: Sequence[str], *, cache: Any | None = None
    ) -> ChoiceScores:
        """Log-probabilities of each choice's first token after `inputs` + `suffix`.

        Args:
            inputs: The prompt as `encode` made it (token ids, batch 1).
            suffix: Text that follows the prompt (e.g. `follow_up`'s), tokenised on its own.
            choices: Words whose first tokens are scored (e.g. "Yes", "No").
            cache: The KV cache a `stream` of this same prompt filled (passed to it as
                `cache=`); it is cut back to the prompt and only the suffix is run. None, or a
                cache shorter than the prompt: the whole sequence is run.

        Returns:
            `ChoiceScores`; `fed_tokens` says how many positions the model ran.
        """
        start = time.perf_counter()
        if inputs.input_ids is None or inputs.batch_size != 1:
            raise ValueError("choice_logprobs needs the token ids of one prompt")
        ids = self.choice_token_ids(choices)
        suffix_ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        if not suffix_ids:
            raise ValueError("the suffix to score after is empty")
        prompt_ids = inputs.input_ids.to(self.device)
        # tail: [1, S_suffix]
        tail = torch.tensor([suffix_ids], dtype=prompt_ids.dtype, device=self.device)
        total = prompt_ids.shape[1] + tail.shape[1]
        reuse = (
            cache is not None
            and inputs.attention_mask is None
            and not inputs.model_kwargs
            and cache.get_seq_length() >= prompt_ids.shape[1]
        )
        if reuse:
            # After a stream the cache also holds the reply; keep the prompt's positions only.
            extra = cache.get_seq_length() - prompt_ids.shape[1]
            if extra:
                cache.crop(-extra)  # transformers 5: a negative count of tokens to drop
            fed = tail
        else:
            cache = self.new_cache()
            self._reset_position_state()
            fed = torch.cat([prompt_ids, tail], dim=1)
        out = self.model(input_ids=fed, cache=cache, use_cache=True, logits_to_keep=1)
        # logits: [1, 1, V] -> [V]
        logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        return ChoiceScores(
            logprobs=tuple(float(logprobs[i]) for i in ids),
            fed_tokens=int(fed.shape[1]),
            total_tokens=int(total),
            seconds=time.perf_counter() - start,
        )

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
        on_prefill: Callable[[int], None] | None = None,
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
            on_prefill: Called with the prompt's token count just before the prefill (a
                progress line such as "Reading 1,062 prompt tokens…").

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
                on_prefill=on_prefill,
            )
        )

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
        on_prefill: Callable[[int], None] | None,
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
        answer = AnswerTokens(
            self._decode, eos_token_ids=self.eos_token_ids, stop_strings=stop_strings,
            stop_at_newline=stop_at_newline, max_new_tokens=max_new_tokens,
        )  # fmt: skip
        if on_prefill is not None:
            on_prefill(inputs.num_tokens)
        t0 = time.perf_counter()
        logits, cache = runner.prefill(inputs, cache=cache, **prefill_kwargs)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)  # kernels run async: time the real prefill
        prefill_s = time.perf_counter() - t0
        ttft_s = 0.0
        decode_s = 0.0
        while True:
            token = select_next_token(
                logits, temperature=temperature, top_p=self.config.top_p, generator=sampler
            )
            if not answer.tokens:
                ttft_s = time.perf_counter() - start
            delta, reason = answer.add(int(token[0]))
            if delta:
                yield delta
            if reason is not None:
                break
            t1 = time.perf_counter()
            logits = runner.decode_step(token, cache)
            decode_s += time.perf_counter() - t1
        return Generation(
            text=answer.text,
            stop_reason=reason,
            prompt_tokens=inputs.num_tokens,
            new_tokens=len(answer.tokens),
            ttft_s=ttft_s,
            prefill_s=prefill_s,
            decode_s=decode_s,
        )

    # ----------------------------------------------------------------------------- helpers

    def _eos_ids(self) -> frozenset[int]:
        """End-of-sequence ids: generation config, tokenizer, and end-of-turn tokens in chat style."""
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        return self._end_ids(configured)

    def _to_model(self, value: Any) -> Any:
        """Move a tensor to the model's device; float inputs (pixels) also take its dtype."""
        if not torch.is_tensor(value):
            return value
        if value.is_floating_point():
            return value.to(self.device, dtype=self.model.dtype)
        return value.to(self.device)

    def _reset_position_state(self) -> None:
        """Forget per-prompt position state (Qwen2-VL's M-RoPE deltas) before a new prefill."""
        # NOTE: Qwen2-VL caches `rope_deltas` on the module at prefill and reuses it in decode;
        # HF `generate` recomputes it per call, so a new prompt must not inherit the last one's.
        for module in self.model.modules():
            if getattr(module, "rope_deltas", None) is not None:
                module.rope_deltas = None


def load_generator(
    config: GeneratorConfig | None = None,
    *,
    cache_dir: Path | None = None,
    needs_internals: bool = False,
    stage: str = "this stage",
) -> GeneratorBase:
    """Load the configured model on its runtime, converting a packaged GGUF once into `cache_dir`.

    Args:
        config: Which model, on which runtime, and how to decode; defaults to
            `GeneratorConfig()` (Qwen2.5-Coder-0.5B-Instruct, runtime auto).
        cache_dir: Folder for converted models (the library's `models/`). Required for packaged
            models and `.gguf` paths; a Hugging Face folder loads in place.
        needs_internals: The caller will read hidden states or feed embeddings (URaG, REFRAG):
            runtime auto then picks torch (`models.runtime.select_runtime`).
        stage: The stage that needs them, for the log line and the error.

    Returns:
        A ready generator: `Generator` (torch), `OpenVinoGenerator` or `OpenAIGenerator` (a
            remote OpenAI-compatible server), one interface.

    Raises:
        ValueError: Unknown model name or path, no cache_dir where one is needed,
            runtime="openvino" where it cannot run (the message names `--runtime torch`), or
            runtime="openai" without a base URL or with a stage that needs model internals.
        ModelSourceError: Packaged parts missing, of the wrong version, or failing their
            checksum (the message names the pip command that fixes it), or unreadable weights.
    """
    config = config or GeneratorConfig()
    choice = select_runtime(config, needs_internals=needs_internals, stage=stage)
    logger.info("generator runtime %s: %s", choice.runtime, choice.reason)
    if choice.runtime is GeneratorRuntime.OPENVINO:
        try:
            from models.openvino_generator import load_openvino_generator
        except ImportError as exc:
            raise ModelSourceError(
                f"the openvino runtime needs openvino-genai ({exc.name} is missing): "
                "pip install -e . (or use --runtime torch)"
            ) from exc
        return load_openvino_generator(config, cache_dir=cache_dir)
    if choice.runtime is GeneratorRuntime.OPENAI:
        from models.openai_generator import load_openai_generator

        return load_openai_generator(config, cache_dir=cache_dir)
    return _load_torch_generator(config, cache_dir)


def _load_torch_generator(config: GeneratorConfig, cache_dir: Path | None) -> Generator:
    """The torch runtime: a transformers model from a folder (a packaged GGUF converted once)."""
    from transformers import AutoConfig

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
