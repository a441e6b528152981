"""The generator on OpenVINO GenAI: the packaged Qwen models, Q8_0, on the CPU.

The same interface as the torch `Generator` for everything the answering path uses (`render`,
`encode`, `tokenizer`, `control_tokens`, `stream`, `generate`, `config`, `eos_token_ids`): the
prompt is rendered and tokenised by the same transformers tokenizer and handed to OpenVINO as
token ids (`TokenizedInputs`, never re-templated), and every generated token goes through the
same stop rules (`AnswerTokens`) inside a `StreamerBase`, which also stops generation at once when
the reader closes the stream (the web app's Stop).

OpenVINO exposes no hidden states and takes no input embeddings: `prefill`, `decode_step`,
`embed_tokens` and `model` fail with a one-line error naming `--runtime torch`, and the runtime
selection (`models.runtime.select_runtime`) sends URaG, REFRAG and `folio_sparse` to torch.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as ov_genai

from models._decoding import AnswerTokens, StopReason
from models._generation import (
    ChoiceScores,
    Generation,
    GenerationStream,
    GeneratorBase,
    PromptInputs,
    WithoutInternals,
)
from models._openvino_weights import Q8Weights, resolve_openvino_ir, resolve_openvino_weights
from models._packaged import ModelSourceError
from models._prompt import Prompt
from models.config import GeneratorConfig

logger = logging.getLogger(__name__)

__all__ = ["OpenVinoGenerator", "load_openvino_generator"]

_NEEDS_TORCH = (
    "the openvino runtime exposes no model internals (hidden states, KV cache, input "
    "embeddings): {what} needs --runtime torch (FOLIO_GENERATOR__RUNTIME=torch)"
)
_DONE = object()  # end of the delta queue


class OpenVinoGenerator(WithoutInternals, GeneratorBase):
    """A packaged Qwen model on OpenVINO GenAI with its transformers tokenizer.

    Build one with `load_openvino_generator`.

    Args:
        pipeline: An `openvino_genai.LLMPipeline`.
        tokenizer: The transformers tokenizer the torch runtime would use for this model.
        config: Decoding defaults and prompt style.
        eos_token_id: The model's end-of-sequence id (its GGUF metadata), beside the tokenizer's
            and the chat end-of-turn tokens.
    """

    needs_internals = _NEEDS_TORCH

    runtime = "openvino"

    def __init__(
        self,
        pipeline: Any,
        tokenizer: Any,
        config: GeneratorConfig | None = None,
        *,
        eos_token_id: int | None = None,
    ) -> None:
        super().__init__(tokenizer, config)
        self.pipeline = pipeline
        self.eos_token_ids = self._end_ids(eos_token_id)
        # One generation at a time per pipeline; concurrent questions take turns.
        self._lock = threading.Lock()

    def choice_logprobs(
        self, inputs: PromptInputs, suffix: str, choices: Sequence[str], *, cache: Any | None = None
    ) -> ChoiceScores:
        """Log-probabilities of each choice's first token after `inputs` + `suffix`.

        OpenVINO GenAI returns no logits, and its `logprobs` option reports only the chosen
        token's log-probability. So each choice is forced as the one new token (a structured-output
        regex of that token's text) and its reported log-probability, which is taken from the
        unconstrained distribution (checked against the unforced greedy pick), is read. With
        `GeneratorConfig.prefix_cache` on, every call after the first finds the prompt (and the
        reply generated after it) in the prefix cache, so only the suffix is run; OpenVINO does
        not say how many tokens it ran, so `fed_tokens` counts the whole sequence.

        Args:
            inputs: The prompt's token ids (batch 1).
            suffix: Text that follows the prompt, tokenised on its own.
            choices: Words whose first tokens are scored.
            cache: Torch-only; must be None here (OpenVINO keeps its own prefix cache).
        """
        if cache is not None:
            raise ValueError(_NEEDS_TORCH.format(what="a KV cache object"))
        if inputs.input_ids is None or inputs.batch_size != 1 or inputs.model_kwargs:
            raise ValueError("choice_logprobs needs the token ids of one prompt")
        start = time.perf_counter()
        suffix_ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        if not suffix_ids:
            raise ValueError("the suffix to score after is empty")
        ids = np.concatenate(
            [inputs.input_ids.cpu().numpy().astype(np.int64), np.array([suffix_ids], np.int64)],
            axis=1,
        )
        tokenized = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        scores = []
        for token in self.choice_token_ids(choices):
            options = ov_genai.GenerationConfig()
            options.max_new_tokens = 1
            options.ignore_eos = True
            options.logprobs = 1
            text = self.tokenizer.decode([token])
            options.structured_output_config = ov_genai.StructuredOutputConfig(
                regex=re.escape(text)
            )
            with self._lock:
                result = self.pipeline.generate(tokenized, options)
            scores.append(float(result.scores[0]))
        return ChoiceScores(
            logprobs=tuple(scores),
            fed_tokens=int(ids.shape[1]),
            total_tokens=int(ids.shape[1]),
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
        """Generate an answer as a stream of text deltas (the torch `Generator.stream` contract).

        Args:
            prompt: A `Prompt`, already-rendered text, or `PromptInputs` with token ids.
            max_new_tokens: Token budget (default: config).
            stop_strings: Strings that end the answer (default: config).
            stop_at_newline: End at the first newline after the answer starts (default: config).
            temperature: 0 for greedy (default: config, which is greedy); > 0 samples with
                OpenVINO's sampler (seeded by `config.seed`, not the torch runtime's draws).
            cache, prefill_kwargs, runner: Torch-only (a KV cache, forward options, a layer-wise
                runner): anything but None (or this generator as runner) is refused.
            on_prefill: Called with the prompt's token count just before the prefill.

        Returns:
            A `GenerationStream`. Nothing runs until the first `next()`; closing the stream
            early (or dropping it) cancels the generation.

        Raises:
            ValueError: A torch-only argument, input embeddings, or a budget below 1.
        """
        if cache is not None or prefill_kwargs:
            raise ValueError(_NEEDS_TORCH.format(what="a KV cache or prefill options"))
        if runner is not None and runner is not self:
            raise ValueError(_NEEDS_TORCH.format(what="a layer-wise runner (URaG)"))
        if isinstance(prompt, PromptInputs) and (
            prompt.inputs_embeds is not None or prompt.model_kwargs
        ):
            raise ValueError(_NEEDS_TORCH.format(what="a prompt of input embeddings (REFRAG)"))
        cfg = self.config
        budget = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        if budget < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {budget}")
        answer = AnswerTokens(
            self._decode,
            eos_token_ids=self.eos_token_ids,
            stop_strings=cfg.stop_strings if stop_strings is None else tuple(stop_strings),
            stop_at_newline=cfg.stop_at_newline if stop_at_newline is None else stop_at_newline,
            max_new_tokens=budget,
        )
        chosen = cfg.temperature if temperature is None else temperature
        return GenerationStream(self._run(prompt, answer, budget, chosen, on_prefill))

    def _run(
        self,
        prompt: Prompt | str | PromptInputs,
        answer: AnswerTokens,
        budget: int,
        temperature: float,
        on_prefill: Callable[[int], None] | None,
    ) -> Iterator[str]:
        """Generate on a worker thread and yield its deltas; returns the `Generation`."""
        start = time.perf_counter()
        inputs = prompt if isinstance(prompt, PromptInputs) else self.encode(prompt)
        if inputs.num_tokens == 0:
            raise ValueError("the prompt is empty after tokenisation")
        if inputs.batch_size != 1:
            raise ValueError(f"stream/generate take one prompt (batch 1), got {inputs.batch_size}")
        ids = inputs.input_ids.cpu().numpy().astype(np.int64)
        tokenized = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        streamer = _AnswerStreamer(answer)
        if on_prefill is not None:
            on_prefill(inputs.num_tokens)

        def work() -> None:
            try:
                with self._lock:
                    streamer.started = time.perf_counter()
                    self.pipeline.generate(
                        tokenized, self._generation_config(budget, temperature), streamer
                    )
            except Exception as exc:  # noqa: BLE001 - re-raised in the reader's thread
                streamer.error = exc
            finally:
                streamer.deltas.put(_DONE)

        worker = threading.Thread(target=work, name="openvino-generate", daemon=True)
        worker.start()
        try:
            while (delta := streamer.deltas.get()) is not _DONE:
                yield delta
        finally:
            streamer.cancelled.set()  # the reader stopped early: the next token ends it
            worker.join()
        if streamer.error is not None:
            lines = str(streamer.error).strip().splitlines() or [type(streamer.error).__name__]
            raise RuntimeError(f"OpenVINO generation failed: {lines[0]}") from streamer.error
        if not streamer.token_times:
            raise RuntimeError("OpenVINO generation ended without a token")
        if streamer.reason is None:  # the runtime stopped by itself (its own end token)
            streamer.reason = StopReason.EOS
            if delta := answer.end():
                yield delta
        first, last = streamer.token_times[0], streamer.token_times[-1]
        return Generation(
            text=answer.text,
            stop_reason=streamer.reason,
            prompt_tokens=inputs.num_tokens,
            new_tokens=len(answer.tokens),
            ttft_s=first - start,
            prefill_s=first - streamer.started,
            decode_s=last - first,
        )

    def _generation_config(self, budget: int, temperature: float) -> Any:
        """OpenVINO decoding options: the budget and the sampler; stopping is ours."""
        options = ov_genai.GenerationConfig()
        options.max_new_tokens = budget
        # Every end rule (EOS, stop strings, newline) is applied by the streamer, as in torch.
        options.ignore_eos = True
        if temperature > 0:
            options.do_sample = True
            options.temperature = temperature
            options.top_p = self.config.top_p
            options.rng_seed = self.config.seed
        return options


class _AnswerStreamer(ov_genai.StreamerBase):
    """Feeds each token to `AnswerTokens` and queues its delta; says stop when the answer ends
    and cancel when the reader went away."""

    def __init__(self, answer: AnswerTokens) -> None:
        super().__init__()
        self.answer = answer
        self.deltas: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = threading.Event()
        self.reason: StopReason | None = None
        self.error: Exception | None = None
        self.started = 0.0
        self.token_times: list[float] = []

    def emit(self, delta: str) -> None:
        if delta:
            self.deltas.put(delta)

    def write(self, token: Any) -> ov_genai.StreamingStatus:
        try:
            for one in token if isinstance(token, list | tuple) else [token]:
                if self.reason is not None:
                    break  # OpenVINO may hand over a token past our stop: not part of the answer
                self.token_times.append(time.perf_counter())
                delta, self.reason = self.answer.add(int(one))
                self.emit(delta)
        except Exception as exc:  # noqa: BLE001 - an exception must not cross into C++
            self.error = exc
            return ov_genai.StreamingStatus.CANCEL
        if self.cancelled.is_set():
            return ov_genai.StreamingStatus.CANCEL
        if self.reason is not None:
            return ov_genai.StreamingStatus.STOP
        return ov_genai.StreamingStatus.RUNNING

    def end(self) -> None:
        """Nothing is buffered here: every delta was queued as its token arrived."""


def load_openvino_generator(
    config: GeneratorConfig, *, cache_dir: Path | None = None
) -> OpenVinoGenerator:
    """Load a packaged Qwen model on OpenVINO GenAI, re-quantising it to Q8_0 once.

    Args:
        config: Which model and how to decode (`threads`, `prefix_cache` apply here).
        cache_dir: Folder for converted models (the library's `models/`).

    Raises:
        ValueError: Not a packaged model, or no cache_dir.
        ModelSourceError: Parts missing or failing their checksum, or a Q8_0 file OpenVINO
            cannot read.
    """
    from transformers import AutoTokenizer

    start = time.perf_counter()
    weights: Q8Weights = resolve_openvino_weights(config.model, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(weights.folder)
    scheduler = ov_genai.SchedulerConfig()
    scheduler.enable_prefix_caching = config.prefix_cache
    threads = config.threads or len(os.sched_getaffinity(0))
    source = resolve_openvino_ir(weights)
    try:
        pipeline = ov_genai.LLMPipeline(
            str(source), "CPU", scheduler_config=scheduler, INFERENCE_NUM_THREADS=threads
        )
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(
            f"OpenVINO could not load {source}: {first} (delete {weights.folder} to "
            "convert it again)"
        ) from exc
    generator = OpenVinoGenerator(pipeline, tokenizer, config, eos_token_id=weights.eos_token_id)
    logger.info(
        "loaded %s on OpenVINO GenAI (Q8_0, %d threads, prefix cache %s) in %.1f s",
        config.model, threads, "on" if config.prefix_cache else "off",
        time.perf_counter() - start,
    )  # fmt: skip
    return generator
