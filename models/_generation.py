"""What both generator runtimes share: prompt inputs, the finished answer, the stream, and the
tokenizer side of a generator (rendering, tokenising, end tokens, decoding text).

`models.generator.Generator` (torch) and `models.openvino_generator.OpenVinoGenerator` both build
on `GeneratorBase`, so a prompt becomes the same token ids and an answer ends by the same rules
whichever runtime runs the model.
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2.exceptions import TemplateError

from models._decoding import StopReason
from models._prompt import Prompt, load_image
from models.config import GeneratorConfig, PromptStyle

logger = logging.getLogger(__name__)

__all__ = [
    "END_OF_TURN_TOKENS",
    "ChoiceScores",
    "Generation",
    "GenerationStream",
    "GeneratorBase",
    "PromptInputs",
    "WithoutInternals",
]

# Chat models end a turn with one of these; generation_config often lists only <|endoftext|>.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


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


@dataclass(frozen=True)
class ChoiceScores:
    """How likely the model is to begin its next turn with each of a few words.

    Attributes:
        logprobs: Per choice, the log-probability of its first token at the next position
            (the full vocabulary's softmax, not renormalised over the choices).
        fed_tokens: Tokens the model ran to score them: the suffix alone when the prompt's KV
            cache was reused, else the whole sequence.
        total_tokens: Prompt plus suffix tokens (the sequence the scores condition on).
        seconds: Time spent scoring.
    """

    logprobs: tuple[float, ...]
    fed_tokens: int
    total_tokens: int
    seconds: float


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


class WithoutInternals:
    """The torch-only entry points of a runtime that keeps its model out of reach (OpenVINO, a
    remote server): prompts live on the CPU, and asking for the model, a separate prefill or
    decode step, token embeddings or a KV cache fails in one line, `needs_internals` naming
    the fix. Put it before `GeneratorBase` in the bases."""

    needs_internals: str = "{what} needs a local torch model (FOLIO_GENERATOR__RUNTIME=torch)"

    @property
    def device(self) -> Any:
        """Where tokenised prompts live: the CPU."""
        import torch

        return torch.device("cpu")

    @property
    def model(self) -> Any:
        raise AttributeError(self.needs_internals.format(what="the torch model"))

    def prefill(self, inputs: Any, **kwargs: Any) -> Any:
        raise RuntimeError(self.needs_internals.format(what="a separate prefill"))

    def decode_step(self, tokens: Any, cache: Any, **kwargs: Any) -> Any:
        raise RuntimeError(self.needs_internals.format(what="a separate decode step"))

    def embed_tokens(self, input_ids: Any) -> Any:
        raise RuntimeError(self.needs_internals.format(what="embedding tokens"))

    def new_cache(self) -> Any:
        raise RuntimeError(self.needs_internals.format(what="a KV cache object"))


class GeneratorBase(ABC):
    """The tokenizer side of a generator: prompt style, rendering, tokenising, decoding.

    Args:
        tokenizer: A transformers tokenizer.
        config: Decoding defaults and prompt style.
        processor: The multimodal processor for a vision-language model, else None.
    """

    runtime: str = ""
    """The generator runtime's name ("torch", "openvino")."""

    def __init__(
        self, tokenizer: Any, config: GeneratorConfig | None = None, *, processor: Any | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.processor = processor
        self.config = config or GeneratorConfig()
        self.style = self._resolve_style(self.config.prompt_style)

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

    def follow_up(self, prompt: Prompt, reply: str, question: str) -> str:
        """The text that continues the rendered `prompt` after the model replied `reply`: the
        end of that turn, `question` as a new user turn, and the start of the model's next turn.

        `render(prompt) + follow_up(...)` is the whole conversation as the model reads it, so a
        KV cache of the prompt serves it and only these tokens are new.

        Raises:
            ValueError: The chat template renders the longer conversation with another prefix
                (it rewrites earlier turns), so the prompt's cache could not serve it.
        """
        rendered = self.render(prompt)
        if self.style is PromptStyle.COMPLETION:
            return f" {reply}\n\nQuestion: {question}\nAnswer:"
        with_images = self.is_multimodal
        owner = self.processor if with_images else self.tokenizer
        turns = [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": question},
        ]
        try:
            full = owner.apply_chat_template(
                prompt.messages(with_images=with_images) + turns,
                tokenize=False,
                add_generation_prompt=True,
            )
        except TemplateError as exc:
            if "system" not in str(exc).lower():
                raise
            full = owner.apply_chat_template(
                prompt.messages(with_images=with_images, system_role=False) + turns,
                tokenize=False,
                add_generation_prompt=True,
            )
        if not full.startswith(rendered):
            raise ValueError("the chat template rewrites earlier turns; no follow-up prefix")
        return full[len(rendered) :]

    def choice_logprobs(
        self, inputs: PromptInputs, suffix: str, choices: Sequence[str], *, cache: Any | None = None
    ) -> ChoiceScores:
        """Score `choices` as the first token after `inputs` followed by `suffix`; each runtime
        that can read next-token probabilities implements it, reusing what it kept of the prompt.

        Raises:
            NotImplementedError: A runtime that cannot (a remote model without log-probabilities).
        """
        raise NotImplementedError(f"the {self.runtime or 'this'} runtime cannot score choices")

    def choice_token_ids(self, choices: Sequence[str]) -> list[int]:
        """The first token id of each choice (no special tokens).

        Raises:
            ValueError: A choice that tokenises to nothing.
        """
        ids = []
        for choice in choices:
            tokens = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
            if not tokens:
                raise ValueError(f"choice {choice!r} has no tokens")
            ids.append(int(tokens[0]))
        return ids

    def generate(self, prompt: Prompt | str | PromptInputs, **options: Any) -> Generation:
        """`stream` consumed to the end: the same arguments, the finished `Generation`."""
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        return stream.result

    @abstractmethod
    def stream(self, prompt: Prompt | str | PromptInputs, **options: Any) -> GenerationStream:
        """Generate an answer as a stream of text deltas (each runtime implements it)."""

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

    def _end_ids(self, configured: Any) -> frozenset[int]:
        """End-of-sequence ids: `configured` (the model's generation config), the tokenizer's,
        and end-of-turn tokens in chat style."""
        ids: set[int] = set()
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(int(i) for i in configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        if self.style is PromptStyle.CHAT:
            vocab = self.tokenizer.get_vocab()
            ids.update(vocab[name] for name in END_OF_TURN_TOKENS if name in vocab)
        if not ids:
            logger.warning("the model defines no end-of-sequence token; answers end by budget")
        return frozenset(ids)

    def _to_model(self, value: Any) -> Any:
        """Where tokenised inputs go (the torch runtime moves them to the model's device)."""
        return value

    def _fit_image(self, image: Any) -> Any:
        """Downscale a PIL image to at most `config.max_image_pixels` pixels."""
        limit = self.config.max_image_pixels
        width, height = image.size
        if width * height <= limit:
            return image
        scale = (limit / (width * height)) ** 0.5
        return image.resize((max(1, int(width * scale)), max(1, int(height * scale))))
