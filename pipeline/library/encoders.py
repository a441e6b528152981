"""The encoders a library's retrieval modes need: MiniLM for dense runs, SPLADE for learned
sparse runs, each loaded only when a mode (or a fused mode's positive weight) uses it."""

from __future__ import annotations

from collections.abc import Sequence

from models.config import EncoderConfig
from models.encoders import MiniLMEncoder, SpladeEncoder
from retrieval import RetrievalConfig, RetrievalMode

__all__ = ["make_encoders"]


def make_encoders(
    modes: Sequence[RetrievalMode],
    retrieval_config: RetrievalConfig,
    encoder_config: EncoderConfig | None = None,
) -> tuple[MiniLMEncoder | None, SpladeEncoder | None]:
    """The dense and SPLADE encoders that `modes` need (None where not needed).

    Fused modes use SPLADE only when its fusion weight is positive.
    """
    encoder_config = encoder_config or EncoderConfig()
    fused = any(m in (RetrievalMode.HYBRID, RetrievalMode.HYBRID_PRF) for m in modes)
    need_dense = RetrievalMode.DENSE in modes or (
        fused and retrieval_config.fusion.dense_weight > 0
    )
    need_splade = RetrievalMode.SPLADE in modes or (
        fused and retrieval_config.fusion.splade_weight > 0
    )
    return (
        MiniLMEncoder(encoder_config) if need_dense else None,
        SpladeEncoder(encoder_config) if need_splade else None,
    )
