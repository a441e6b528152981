"""Live status lines for a question in flight ("Retrieving from the library…"), for front ends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Progress"]


class Progress:
    """Tells the caller's `on_progress` which stage starts; a failing callback is only logged.

    Args:
        callback: Called with a short human-readable status line; None: nothing is told.
    """

    def __init__(self, callback: Callable[[str], None] | None = None) -> None:
        self.callback = callback

    def __call__(self, status: str) -> None:
        if self.callback is None:
            return
        try:
            self.callback(status)
        except Exception:  # noqa: BLE001 - a display callback must never break answering
            logger.exception("on_progress failed on %r", status)

    def stream_args(self, generator: Any, runner: Any | None = None) -> dict[str, Any]:
        """`generator.stream` arguments that run the prompt through `runner` (None: the
        generator itself) and announce the prefill with the prompt's tokens."""
        if self.callback is None:
            return {} if runner is None else {"runner": runner}
        return {"runner": _AnnouncingRunner(generator if runner is None else runner, self)}


class _AnnouncingRunner:
    """A runner (the generator or a URaG pass) that says "Reading N prompt tokens…" as its
    prefill starts."""

    def __init__(self, inner: Any, say: Progress) -> None:
        self.inner, self.say = inner, say

    def prefill(self, inputs: Any, **kwargs: Any) -> Any:
        self.say(f"Reading {inputs.num_tokens:,} prompt tokens…")
        return self.inner.prefill(inputs, **kwargs)

    def decode_step(self, tokens: Any, cache: Any) -> Any:
        return self.inner.decode_step(tokens, cache)
