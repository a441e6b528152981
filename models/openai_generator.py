"""The generator on a remote OpenAI-compatible server: vLLM, Ollama, llama.cpp server, `transformers
serve`, or any service that speaks the chat-completions protocol (`runtime=openai`).

The same interface as the local runtimes for everything the answering path uses (`tokenizer`,
`control_tokens`, `is_multimodal`, `render`, `encode`, `stream`, `generate`, `config`): the prompt
goes as chat messages (the system instruction, the user's numbered evidence and question), so the
server applies its own chat template; with `images` on, each figure or table crop goes as a base64
PNG `image_url` part right after its text. Answers stream through the official `openai` client
(`chat.completions.create(stream=True)`), which retries a failed connection, a timeout, HTTP
408/409/429 and 5xx with exponential backoff (honouring `Retry-After`). The stop rules are Folio's
own, applied to the streamed text (`StopTextTracker`): the stream is closed as soon as the answer
ends, which also ends the generation on the server, and so does closing the stream early (Stop).

Counting tokens (the evidence budget, the sampler) needs a tokenizer: the model's own when the
remote model is a packaged one (its name, a known alias, or a local model folder the server was
started on), else `ApproxTokenizer` (see there for how close it is).

A remote model exposes no hidden states and takes no input embeddings: URaG, REFRAG and
`folio_sparse` are refused in one line by `models.runtime.select_runtime`, and `prefill`,
`decode_step`, `embed_tokens`, `new_cache` and `model` fail naming a local torch model.

Errors are one line (`RemoteGeneratorError`, a `ConnectionError`): the server unreachable (with
the URL and the setting to check), no answer within the timeout, an HTTP error with the server's
message, or a stream that broke off mid-answer; then no partial answer is returned. The API key
never appears in a log line, a `repr`, a settings dump or an error message.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from models._decoding import StopReason, StopTextTracker
from models._generation import (
    END_OF_TURN_TOKENS,
    Generation,
    GenerationStream,
    GeneratorBase,
    PromptInputs,
    WithoutInternals,
)
from models._packaged import PACKAGED_MODELS, resolve_model_dir
from models._prompt import Prompt, load_image
from models.config import GeneratorConfig, PromptStyle

logger = logging.getLogger(__name__)

__all__ = [
    "ApproxTokenizer",
    "OpenAIGenerator",
    "RemoteGeneratorError",
    "load_openai_generator",
    "remote_tokenizer",
]

_NEEDS_LOCAL = (
    "a remote generator (runtime=openai) exposes no model internals (hidden states, KV cache, "
    "input embeddings): {what} needs a local torch model (FOLIO_GENERATOR__RUNTIME=torch)"
)
# Names a server may know a packaged model by (Hugging Face ids, Ollama tags): their tokenizer
# is the packaged one, so token counts are exact.
_ALIASES: dict[str, str] = {
    "qwen/qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b",
    "qwen2.5-coder:0.5b": "qwen2.5-coder-0.5b",
    "qwen2.5-coder:0.5b-instruct": "qwen2.5-coder-0.5b",
    "qwen/qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b",
    "qwen2.5-coder:1.5b": "qwen2.5-coder-1.5b",
    "qwen2.5-coder:1.5b-instruct": "qwen2.5-coder-1.5b",
}
# Control tokens of the common chat templates: what `defuse` rewrites in quoted evidence when the
# remote model's own tokenizer is unknown (the server may parse them in message text).
_COMMON_CONTROL_TOKENS = (
    *END_OF_TURN_TOKENS,
    "<|im_start|>",
    "<start_of_turn>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
)
_NO_KEY = "EMPTY"  # sent when no key is configured: local servers ignore it, the client needs one


class RemoteGeneratorError(ConnectionError):
    """The remote generator could not answer: unreachable, timed out, an HTTP error, or a stream
    that broke off. The message is one line that names the server and what to check."""


class ApproxTokenizer:
    """Token counts for a remote model whose tokenizer Folio does not have.

    Words of letters count one token per 6 letters (at least one), every digit and every other
    symbol one token, whitespace none. On 1,200-character chunks of the MMLongBench dev documents
    and three papers (532 chunks), this is within -28% / +39% of Qwen2.5's own count, median +4%
    (chars / 4, the usual rule of thumb, was off by -72% / +34% on the same chunks: tables and
    numbers). Tokenizers that group digits count fewer tokens, so budgets err on the safe side.

    It has only what the answering path uses of a transformers tokenizer: `__call__` (ids are
    hashes of the pieces, good for counting only), the special tokens, and no chat template.
    """

    _PIECE = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")
    eos_token_id = None
    chat_template = None
    all_special_tokens: tuple[str, ...] = _COMMON_CONTROL_TOKENS
    added_tokens_decoder: Mapping[int, Any] = {}

    def __call__(
        self, text: str, *, add_special_tokens: bool = False, return_tensors: str | None = None
    ) -> dict[str, Any]:
        ids: list[int] = []
        for piece in self._PIECE.findall(text):
            crc = zlib.crc32(piece.encode("utf-8"))
            parts = max(1, math.ceil(len(piece) / 6)) if piece[0].isalpha() else 1
            ids.extend(crc + i for i in range(parts))
        if return_tensors == "pt":
            return {"input_ids": torch.tensor([ids], dtype=torch.long)}
        return {"input_ids": ids}

    def get_vocab(self) -> dict[str, int]:
        return {}

    def decode(self, ids: Any, **kwargs: Any) -> str:
        raise NotImplementedError("ApproxTokenizer counts tokens; the server's text is the answer")


class OpenAIGenerator(WithoutInternals, GeneratorBase):
    """A model served over the OpenAI chat-completions protocol.

    Build one with `load_openai_generator`.

    Args:
        client: An `openai.OpenAI` client (base URL, key, timeout and retries set).
        tokenizer: The served model's tokenizer, or an `ApproxTokenizer`.
        config: Decoding defaults; `model` is the name the server knows the model by.
    """

    needs_internals = _NEEDS_LOCAL

    runtime = "openai"

    def __init__(self, client: Any, tokenizer: Any, config: GeneratorConfig) -> None:
        if config.prompt_style is PromptStyle.COMPLETION:
            raise ValueError(
                "runtime=openai sends chat messages (the server applies its chat template); "
                'prompt_style="completion" needs a local model'
            )
        super().__init__(tokenizer, config)
        self.client = client
        self.base_url = str(client.base_url).rstrip("/")
        self.eos_token_ids: frozenset[int] = frozenset()  # the server ends its own turns
        self._secret = config.api_key.get_secret_value() if config.api_key is not None else ""

    @property
    def is_multimodal(self) -> bool:
        """Whether evidence figures go to the server as images (`config.images`)."""
        return self.config.images

    # ----------------------------------------------------------------------------- prompts

    def messages(self, prompt: Prompt) -> list[dict[str, Any]]:
        """The chat messages sent for `prompt`: system instruction, then the user's evidence and
        question; with `images` on, each figure as a base64 PNG `image_url` part after its text.
        """
        if not (self.is_multimodal and prompt.images):
            return prompt.messages(with_images=False)
        pictures = iter(prompt.images)
        out: list[dict[str, Any]] = []
        for message in prompt.messages(with_images=True):
            content = message["content"]
            if isinstance(content, list):
                content = [
                    _image_part(self._fit_image(load_image(next(pictures))))
                    if part["type"] == "image"
                    else part
                    for part in content
                ]
            out.append({**message, "content": content})
        return out

    def render(self, prompt: Prompt) -> str:
        """The prompt as text, for counting its tokens: the model's chat template when its
        tokenizer has one, else the messages' text joined (the server renders its own)."""
        text_only = prompt.messages(with_images=False)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                text_only, tokenize=False, add_generation_prompt=True
            )
        return "\n\n".join(str(m["content"]) for m in text_only)

    def encode(self, prompt: Prompt | str) -> PromptInputs:
        """The prompt's text tokenised (token counts only; images are not counted here)."""
        if isinstance(prompt, Prompt):
            text = self.render(prompt)
        elif isinstance(prompt, str):
            text = prompt
        else:
            raise TypeError(f"prompt must be a Prompt or str, got {type(prompt).__name__}")
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return PromptInputs(input_ids=ids, text=text)

    # ----------------------------------------------------------------------------- answers

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
            prompt: A `Prompt` (sent as chat messages) or a `str` (sent as one user message).
            max_new_tokens: Token budget (default: config), the request's `max_tokens`.
            stop_strings: Strings that end the answer (default: config).
            stop_at_newline: End at the first newline after the answer starts (default: config).
            temperature: 0 for greedy (default: config); > 0 samples on the server (`seed`,
                `top_p` from config).
            cache, prefill_kwargs, runner: Local-model only: anything but None is refused.
            on_prefill: Called with the prompt's token count (Folio's count) before the request.

        Returns:
            A `GenerationStream`. Nothing is sent until the first `next()`; closing the stream
            early (or dropping it) closes the connection, which ends generation on the server.

        Raises:
            ValueError: A local-model-only argument, a tokenised or embedded prompt, or a budget
                below 1.
        """
        if cache is not None or prefill_kwargs or (runner is not None and runner is not self):
            raise ValueError(_NEEDS_LOCAL.format(what="a KV cache, prefill options or a runner"))
        if isinstance(prompt, PromptInputs):
            raise ValueError(_NEEDS_LOCAL.format(what="a tokenised or embedded prompt"))
        cfg = self.config
        budget = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        if budget < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {budget}")
        tracker = StopTextTracker(
            cfg.stop_strings if stop_strings is None else tuple(stop_strings),
            stop_at_newline=cfg.stop_at_newline if stop_at_newline is None else stop_at_newline,
        )
        chosen = cfg.temperature if temperature is None else temperature
        return GenerationStream(self._run(prompt, tracker, budget, chosen, on_prefill))

    def _run(
        self,
        prompt: Prompt | str,
        tracker: StopTextTracker,
        budget: int,
        temperature: float,
        on_prefill: Callable[[int], None] | None,
    ) -> Iterator[str]:
        """Send the request and yield the answer's deltas; returns the `Generation`."""
        from openai import APIError

        start = time.perf_counter()
        if isinstance(prompt, Prompt):
            messages = self.messages(prompt)
        else:
            messages = [{"role": "user", "content": prompt}]
        counted = self.encode(prompt).num_tokens
        if on_prefill is not None:
            on_prefill(counted)
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "stream": True,
            "max_tokens": budget,
            "temperature": temperature,
            # The server's usage (prompt and generated tokens) in the last chunk.
            "stream_options": {"include_usage": True},
        }
        if temperature > 0:
            request.update(top_p=self.config.top_p, seed=self.config.seed)
        sent = time.perf_counter()
        try:
            stream = self.client.chat.completions.create(**request)
        except APIError as exc:
            raise self._error(exc, started=True) from None
        raw = ""
        reason: StopReason | None = None
        finish: str | None = None
        usage: Any = None
        chunks = 0
        first = last = 0.0
        try:
            for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    text = choice.delta.content if choice.delta is not None else None
                    if text:
                        last = time.perf_counter()
                        first = first or last
                        chunks += 1
                        raw += text
                        delta, reason = tracker.update(raw)
                        if delta:
                            yield delta
                    finish = choice.finish_reason or finish
                if reason is not None:
                    break  # our stop rule ended the answer: closing the stream stops the server
        except APIError as exc:
            raise self._error(exc, started=False) from None
        finally:
            stream.close()
        if reason is None:
            if finish is None:
                raise RemoteGeneratorError(
                    f"the generator at {self.base_url} ended the stream without finishing the "
                    "answer (no finish_reason); no partial answer is kept"
                )
            reason = StopReason.MAX_NEW_TOKENS if finish == "length" else StopReason.EOS
            if delta := tracker.finish(raw):
                yield delta
        if not first:
            first = last = time.perf_counter()  # an empty answer: the first token was its end
        new_tokens = getattr(usage, "completion_tokens", None) or max(chunks, 1)
        return Generation(
            text=tracker.shown,
            stop_reason=reason,
            prompt_tokens=getattr(usage, "prompt_tokens", None) or counted,
            new_tokens=new_tokens,
            ttft_s=first - start,
            prefill_s=first - sent,
            decode_s=last - first,
        )

    def _error(self, exc: Exception, *, started: bool) -> RemoteGeneratorError:
        """One line for a failed request (`started`: before any answer) or a broken stream."""
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        url = self.base_url
        if isinstance(exc, APITimeoutError):
            waited = f"{self.config.request_timeout_s:g} s"
            if started:
                line = (
                    f"the generator at {url} did not answer within {waited} "
                    f"(after {self.config.max_retries} retries); raise "
                    "FOLIO_GENERATOR__REQUEST_TIMEOUT_S or check the server"
                )
            else:
                line = (
                    f"the generator at {url} went silent mid-answer for {waited}; "
                    "no partial answer is kept"
                )
        elif isinstance(exc, APIConnectionError):
            cause = _first_line(exc.__cause__ or exc)
            if started:
                line = (
                    f"cannot reach the generator at {url}: {cause}; check "
                    "FOLIO_GENERATOR__BASE_URL and that the server is running"
                )
            else:
                line = (
                    f"the generator at {url} broke off mid-answer ({cause}); no partial answer "
                    "is kept"
                )
        elif isinstance(exc, APIStatusError):
            hint = {
                401: "; check FOLIO_GENERATOR__API_KEY (or OPENAI_API_KEY)",
                403: "; check FOLIO_GENERATOR__API_KEY (or OPENAI_API_KEY)",
                404: f"; check FOLIO_GENERATOR__MODEL ({self.config.model!r}) and the URL",
                429: f" after {self.config.max_retries} retries",
            }.get(exc.status_code, "")
            if exc.status_code >= 500:
                hint = f" after {self.config.max_retries} retries"
            line = (
                f"the generator at {url} answered HTTP {exc.status_code}: "
                f"{_server_message(exc)}{hint}"
            )
        else:
            line = f"the generator at {url} sent an error mid-answer: {_first_line(exc)}"
        if self._secret:
            line = line.replace(self._secret, "***")
        return RemoteGeneratorError(line)


def _image_part(image: Any) -> dict[str, Any]:
    """A PIL image as an OpenAI `image_url` content part (a base64 PNG data URL)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    # "[Errno 111] Connection refused" -> "connection refused"
    errno = re.match(r"^\[Errno -?\d+\]\s*(.*)", lines[0])
    line = errno.group(1)[:1].lower() + errno.group(1)[1:] if errno else lines[0]
    return line[:300]


def _server_message(exc: Any) -> str:
    """The server's error message (OpenAI's `{"error": {"message": ...}}`, or the body's text)."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, Mapping) else error
        if message:
            return _first_line(Exception(str(message)))
    return _first_line(exc)


def remote_tokenizer(config: GeneratorConfig, cache_dir: Path | None) -> Any:
    """The tokenizer Folio counts the remote model's tokens with.

    The packaged model's (by its name or a known alias: `qwen2.5-coder:0.5b`,
    `Qwen/Qwen2.5-Coder-0.5B-Instruct`, ...), a local model folder's when `model` is one (a server
    started on that folder knows the model by its path), else an `ApproxTokenizer`.
    """
    from transformers import AutoTokenizer

    packaged = _ALIASES.get(config.model.lower(), config.model)
    if packaged in PACKAGED_MODELS and cache_dir is not None:
        try:
            return AutoTokenizer.from_pretrained(resolve_model_dir(packaged, cache_dir))
        except (OSError, ValueError, RuntimeError) as exc:
            logger.warning(
                "no tokenizer for %s (%s); counting tokens approximately",
                packaged,
                _first_line(exc),
            )
            return ApproxTokenizer()
    folder = Path(config.model).expanduser()
    if folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(folder)
    logger.info(
        "counting %s's tokens approximately (its tokenizer is not local; see ApproxTokenizer)",
        config.model,
    )
    return ApproxTokenizer()


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_openai_generator(
    config: GeneratorConfig, *, cache_dir: Path | None = None
) -> OpenAIGenerator:
    """A generator answering through the OpenAI-compatible server `config.base_url`.

    Nothing is sent to the server here: an unreachable server is reported by the first question
    (in one line), so the web app and the CLI start without it.

    Args:
        config: `base_url`, `model` (the server's name for it), `api_key` (else the
            OPENAI_API_KEY environment variable, else none), `request_timeout_s`,
            `max_retries`, `images`, and the decoding defaults.
        cache_dir: Folder for converted packaged models (their tokenizer counts tokens).

    Raises:
        ValueError: No `base_url`, or one that is not an http(s) URL.
    """
    import openai

    if not config.base_url:
        raise ValueError(
            "runtime=openai needs the server's URL: set FOLIO_GENERATOR__BASE_URL "
            "(e.g. http://localhost:8000/v1)"
        )
    if not re.match(r"^https?://[^\s/]+", config.base_url):
        raise ValueError(
            f"FOLIO_GENERATOR__BASE_URL must be an http(s) URL such as http://localhost:8000/v1, "
            f"not {config.base_url!r}"
        )
    key = config.api_key.get_secret_value() if config.api_key is not None else ""
    key = key or os.environ.get("OPENAI_API_KEY", "") or _NO_KEY
    if config.api_key is None and key != _NO_KEY:
        config = config.model_copy(update={"api_key": _secret(key)})
    client = openai.OpenAI(
        base_url=config.base_url,
        api_key=key,
        timeout=config.request_timeout_s,
        max_retries=config.max_retries,
    )
    tokenizer = remote_tokenizer(config, cache_dir)
    generator = OpenAIGenerator(client, tokenizer, config)
    logger.info(
        "generator: %s at %s (OpenAI protocol; %s tokens; images %s)",
        config.model,
        generator.base_url,
        "approximate" if isinstance(tokenizer, ApproxTokenizer) else "exact",
        "on" if config.images else "off",
    )
    return generator


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)
