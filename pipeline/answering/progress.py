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

    def stream_args(self, runner: Any | None = None) -> dict[str, Any]:
        """`generator.stream` arguments that run the prompt through `runner` (None: the
        generator itself) and announce the prefill with the prompt's tokens (both runtimes
        call `on_prefill` just before their prefill)."""
        args: dict[str, Any] = {} if runner is None else {"runner": runner}
        if self.callback is not None:
            args["on_prefill"] = lambda tokens: self(f"Reading {tokens:,} prompt tokens…")
        return args
