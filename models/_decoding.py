"""Pure decoding helpers: token choice and incremental text with stop conditions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum

import torch

logger = logging.getLogger(__name__)


class StopReason(StrEnum):
    """Why generation ended."""

    EOS = "eos"  # the model emitted an end-of-sequence / end-of-turn token
    STOP_STRING = "stop_string"  # a configured stop string appeared
    NEWLINE = "newline"  # the first newline after the answer started (short answers)
    MAX_NEW_TOKENS = "max_new_tokens"  # the token budget ran out


def select_next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick the next token per row.

    Args:
        logits: `[B, V]` next-token logits.
        temperature: 0 picks the argmax (deterministic); > 0 samples from `softmax(logits / T)`.
        top_p: Keep the smallest set of tokens whose probability reaches `top_p` when sampling.
        generator: Seeded generator for sampling (ignored when greedy).

    Returns:
        `[B]` token ids (int64).
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    # probs: [B, V]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token once the mass before it already reaches top_p; the top token always stays.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    # NOTE: multinomial on CPU with an explicit generator is reproducible across runs.
    sample_on = generator.device if generator is not None else probs.device
    choice = torch.multinomial(probs.to(sample_on), 1, generator=generator)
    return choice.squeeze(-1).to(logits.device)


class StopTextTracker:
    """Turns the decoded text of all tokens so far into safe-to-show deltas and a stop decision.

    The text a caller has been shown is always a prefix of the final answer: trailing whitespace,
    an incomplete UTF-8 character (U+FFFD) and any tail that could begin a stop string are held
    back until the next token settles them. Leading whitespace is dropped, and the newline stop
    only counts once the answer has begun (models often open with a newline).
    """

    def __init__(self, stop_strings: tuple[str, ...], *, stop_at_newline: bool) -> None:
        self._stops = tuple(s for s in stop_strings if s)
        self._newline = stop_at_newline
        self.shown = ""

    def update(self, decoded: str) -> tuple[str, StopReason | None]:
        """Take the decoded text of every generated token so far.

        Returns:
            The new delta to show (possibly `""`) and the stop reason, or `None` to continue.
        """
        text = decoded.lstrip()
        cut, reason = self._find_stop(text)
        if reason is not None:
            return self._advance(text[:cut].rstrip(), final=True), reason
        return self._advance(self._safe_prefix(text)), None

    def finish(self, decoded: str) -> str:
        """The last delta when generation ends without a stop condition in the text."""
        return self._advance(decoded.strip().removesuffix("\ufffd").rstrip(), final=True)

    def _find_stop(self, text: str) -> tuple[int, StopReason | None]:
        """Earliest stop in `text`: (index, reason) or (len, None)."""
        best, reason = len(text), None
        for stop in self._stops:
            index = text.find(stop)
            if 0 <= index < best:
                best, reason = index, StopReason.STOP_STRING
        if self._newline:
            index = text.find("\n")
            if 0 <= index < best:
                best, reason = index, StopReason.NEWLINE
        return best, reason

    def _safe_prefix(self, text: str) -> str:
        """`text` minus any tail that a later token could still change or cut."""
        safe, previous = text, None
        while safe != previous:
            previous = safe
            safe = safe.rstrip().removesuffix("\ufffd")
            for stop in self._stops:
                for length in range(min(len(stop) - 1, len(safe)), 0, -1):
                    if safe.endswith(stop[:length]):
                        safe = safe[:-length]
                        break
        return safe

    def _advance(self, visible: str, *, final: bool = False) -> str:
        """Move `shown` forward to `visible` and return what was added."""
        if not visible.startswith(self.shown):
            # NOTE: a tokenizer whose decode rewrites earlier text (space clean-up) can break
            # the prefix property; hold the stream rather than show text that changes, and let
            # the final text win (it then differs from the joined deltas).
            logger.debug("decoded text rewrote its prefix: %r -> %r", self.shown, visible)
            if final:
                self.shown = visible
            return ""
        delta = visible[len(self.shown) :]
        self.shown = visible
        return delta


class AnswerTokens:
    """The generated tokens of one answer and the rules that end it, one token at a time.

    Both runtimes feed each new token here, so an answer ends for the same reason at the same
    token whichever runtime produced it.

    Args:
        decode: Text of a list of token ids (special tokens dropped).
        eos_token_ids: Tokens that end the answer (not shown).
        stop_strings: Strings that end the answer (cut off).
        stop_at_newline: End at the first newline after the answer starts.
        max_new_tokens: Token budget.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        *,
        eos_token_ids: frozenset[int],
        stop_strings: tuple[str, ...],
        stop_at_newline: bool,
        max_new_tokens: int,
    ) -> None:
        self._decode = decode
        self._eos = eos_token_ids
        self._budget = max_new_tokens
        self._tracker = StopTextTracker(stop_strings, stop_at_newline=stop_at_newline)
        self.tokens: list[int] = []

    @property
    def text(self) -> str:
        """The answer shown so far (the final answer once a stop reason was returned)."""
        return self._tracker.shown

    def add(self, token: int) -> tuple[str, StopReason | None]:
        """Take the next token: (the text delta to show, the stop reason or None to go on)."""
        self.tokens.append(token)
        if token in self._eos:
            return self._tracker.finish(self._decode(self.tokens[:-1])), StopReason.EOS
        delta, reason = self._tracker.update(self._decode(self.tokens))
        if reason is None and len(self.tokens) >= self._budget:
            reason = StopReason.MAX_NEW_TOKENS
            delta += self._tracker.finish(self._decode(self.tokens))
        return delta, reason

    def end(self) -> str:
        """The last delta when the runtime ended the answer without a token that stops it."""
        return self._tracker.finish(self._decode(self.tokens))
