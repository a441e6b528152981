"""The ``folio_sparse`` attention backend for transformers: block-sparse prefill, stock SDPA otherwise.

Plugged in through transformers' registries, never by patching model code (STYLE.md B6)::

    from models.attention import SparseAttentionConfig, register_sparse_attention

    register_sparse_attention()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="folio_sparse")
    model(input_ids, sparse_attention=SparseAttentionConfig(method="vertical_slash"))

The options travel as the ``sparse_attention`` keyword through ``forward`` down to the attention
function; without it the options bound at registration (or the defaults) apply. A prefill of at least ``min_length``
query tokens without padding runs the block-sparse kernel: sliding-window layers through their
exact window blocks, full-attention layers through the configured pattern (vertical-slash,
FlexPrefill, HISA, or every causal block). Shorter prefills, decoding, padded batches, custom
masks, training with dropout, soft-capping and attention sinks go to the stock SDPA function.

Decoding is stock SDPA unless the caller opts into TidalDecode by passing a per-request
``SparseDecodeState`` as ``sparse_decode=`` on each decode step: selection layers then pick the
positions that later full-attention layers attend to.

The mask function registered under the same name returns ``None`` exactly when the mask is plain
causal (or sliding-window causal) attention aligned to the last key, with no padding; the backend
then applies causality and the window itself. Every other case gets the full SDPA boolean mask.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from kernels import (
    Backend,
    BlockIndex,
    block_sparse_attn,
    build_dense_index,
    build_flexprefill_index,
    build_hisa_index,
    build_vertical_slash_index,
    build_window_index,
    select_decode_tokens,
    sparse_decode,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND_NAME",
    "DECODE_KWARG",
    "OPTIONS_KWARG",
    "SparseAttentionConfig",
    "SparseDecodeState",
    "SparseMethod",
    "build_layer_index",
    "register_sparse_attention",
    "sparse_attention_forward",
    "sparse_attention_mask",
]

BACKEND_NAME = "folio_sparse"
OPTIONS_KWARG = "sparse_attention"
DECODE_KWARG = "sparse_decode"


class SparseMethod(StrEnum):
    """Block pattern for full-attention layers during a long prefill."""

    DENSE = "dense"  # every causal block (equals SDPA; for checks and ablations)
    VERTICAL_SLASH = "vertical_slash"  # MInference
    FLEXPREFILL = "flexprefill"  # FlexPrefill, adaptive budget
    HISA = "hisa"  # two-stage block -> token selection


class SparseAttentionConfig(BaseModel):
    """Options of the ``folio_sparse`` backend (passed as ``sparse_attention=`` to ``forward``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: SparseMethod = Field(
        default=SparseMethod.FLEXPREFILL,
        description="Block pattern for full-attention layers (FlexPrefill adapts its budget per "
        "head and layer; see BENCHMARKS.md for the mass/speed trade-off of each).",
    )
    min_length: int = Field(
        default=4096, ge=2, description="Prefill query length from which the sparse kernel runs."
    )
    backend: Backend = Field(
        default=Backend.AUTO,
        description='Kernel backend: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, the '
        'gather path on CPU), "triton", "torch" or "reference".',
    )
    sparse_windows: bool = Field(
        default=True,
        description="Run sliding-window layers through their window blocks (exact, and cheaper "
        "than SDPA with a materialised window mask).",
    )
    dense_layers: tuple[int, ...] = Field(
        default=(),
        description="Layer indices whose full attention stays dense (every causal block).",
    )
    share_kv_heads: bool = Field(
        default=True,
        description="One pattern per key head (GQA group) instead of per query head: the CPU "
        "path then gathers each key block once for the whole group.",
    )
    sink_blocks: int = Field(default=1, ge=0, description="First key blocks always kept.")
    local_blocks: int = Field(default=2, ge=1, description="Most recent causal blocks always kept.")
    vertical_blocks: int = Field(
        default=32, ge=0, description="vertical_slash: column blocks kept."
    )
    slash_blocks: int = Field(default=32, ge=0, description="vertical_slash: diagonal blocks kept.")
    last_q: int = Field(
        default=64, ge=1, description="vertical_slash: queries used for the estimate."
    )
    gamma: float = Field(
        default=0.9, gt=0.0, le=1.0, description="flexprefill: attention mass to cover."
    )
    tau: float = Field(
        default=0.1, ge=0.0, description="flexprefill: JS-distance threshold for query-aware heads."
    )
    max_blocks: int | None = Field(
        default=None, ge=1, description="flexprefill: cap on blocks per query block."
    )
    candidate_blocks: int = Field(default=48, ge=0, description="hisa: blocks surviving stage 1.")
    top_k: int = Field(
        default=48 * 64,
        ge=0,
        description="hisa: tokens kept in stage 2 (>= candidate_blocks * 64 keeps whole blocks).",
    )


_DEFAULT_CONFIG = SparseAttentionConfig()


class SparseDecodeState:
    """Opt-in TidalDecode for decode steps: one object per request, passed as ``sparse_decode=``.

    Full-attention layers before the first selection layer decode densely; a selection layer
    decodes densely and keeps the ``budget`` positions its queries attend to most (per key head);
    the full-attention layers after it attend to those positions only, until the next selection
    layer re-selects. Sliding-window layers stay dense (their window is already small). The
    positions chosen in the current step live here (``token_idx``), owned by the caller.

    Args:
        selection_layers: indices of the full-attention layers that select (TidalDecode: an early
            layer and one in the middle).
        budget: positions kept per key head.
        sink_tokens: first positions always kept.
        local_tokens: most recent positions always kept.
        backend: kernel backend for the sparse steps.
    """

    def __init__(
        self,
        selection_layers: tuple[int, ...],
        *,
        budget: int = 256,
        sink_tokens: int = 4,
        local_tokens: int = 64,
        backend: Backend | str = Backend.AUTO,
    ) -> None:
        if not selection_layers:
            raise ValueError("selection_layers must name at least one layer")
        if budget <= sink_tokens + local_tokens:
            raise ValueError(
                f"budget {budget} must exceed sink_tokens + local_tokens = {sink_tokens + local_tokens}"
            )
        self.selection_layers = tuple(sorted(selection_layers))
        self.budget = budget
        self.sink_tokens = sink_tokens
        self.local_tokens = local_tokens
        self.backend = Backend(backend)
        self.token_idx: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"SparseDecodeState(selection_layers={self.selection_layers}, budget={self.budget})"


def build_layer_index(
    query: torch.Tensor,
    key: torch.Tensor,
    config: SparseAttentionConfig,
    *,
    scale: float,
    sliding_window: int | None = None,
    layer_idx: int | None = None,
) -> BlockIndex:
    """The block table one layer's prefill uses.

    Args:
        query: ``[B, H, T, D]``.
        key: ``[B, H_kv, S, D]``.
        config: backend options.
        scale: the layer's softmax scale.
        sliding_window: the layer's window, ``None`` for full attention.
        layer_idx: the layer's index (for ``dense_layers``).

    Returns:
        The ``BlockIndex`` for ``block_sparse_attn``.
    """
    b, h, t, _ = query.shape
    hkv, s = key.shape[1], key.shape[2]
    heads = hkv if config.share_kv_heads else h
    if sliding_window is not None:
        return build_window_index(b, heads, t, s, window=sliding_window, device=query.device)
    method = config.method
    if method is SparseMethod.DENSE or (layer_idx is not None and layer_idx in config.dense_layers):
        return build_dense_index(b, heads, t, s, device=query.device)
    common: dict[str, Any] = {
        "sink_blocks": config.sink_blocks,
        "local_blocks": config.local_blocks,
        "scale": scale,
        "share_kv_heads": config.share_kv_heads,
    }
    if method is SparseMethod.VERTICAL_SLASH:
        return build_vertical_slash_index(
            query,
            key,
            vertical_blocks=config.vertical_blocks,
            slash_blocks=config.slash_blocks,
            last_q=config.last_q,
            **common,
        )
    if method is SparseMethod.FLEXPREFILL:
        return build_flexprefill_index(
            query, key, gamma=config.gamma, tau=config.tau, max_blocks=config.max_blocks, **common
        )
    return build_hisa_index(
        query, key, candidate_blocks=config.candidate_blocks, top_k=config.top_k, **common
    )


def _explicit_causal_mask(
    q_len: int, kv_len: int, window: int | None, device: torch.device
) -> torch.Tensor:
    """``[1, 1, T, S]`` bool, bottom-right aligned causal (and window) mask for the SDPA fallback."""
    qpos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    kpos = torch.arange(kv_len, device=device)[None, :]
    keep = kpos <= qpos
    if window is not None:
        keep &= qpos - kpos < window
    return keep[None, None]


def _dense_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    window: int | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Stock SDPA. A ``None`` mask from our mask function means causal + window, bottom-right."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None:
        window_cuts = window is not None and kv_len > window
        misaligned = q_len > 1 and kv_len != q_len
        if window_cuts or misaligned:
            attention_mask = _explicit_causal_mask(q_len, kv_len, window, query.device)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def sparse_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    *,
    default_config: SparseAttentionConfig | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention function registered as ``folio_sparse`` (the transformers backend signature).

    Args:
        module: the attention module (``layer_idx``, ``is_causal``, ``training`` are read).
        query: ``[B, H, T, D]``.
        key: ``[B, H_kv, S, D]`` (cache included).
        value: ``[B, H_kv, S, D]``.
        attention_mask: ``None`` for plain causal attention (see ``sparse_attention_mask``), else
            the SDPA boolean mask.
        dropout: attention dropout (sparse only without it).
        scaling: softmax scale, default ``D ** -0.5``.
        sliding_window: the layer's window, if any.
        softcap: logit soft-capping (unsupported by the kernel: dense fallback raises like SDPA).
        default_config: options when the call carries none (bound by ``register_sparse_attention``).
        **kwargs: forwarded to SDPA; ``sparse_attention`` carries a per-call ``SparseAttentionConfig``.

    Returns:
        ``([B, T, H, D], None)`` like ``sdpa_attention_forward``.
    """
    config = kwargs.pop(OPTIONS_KWARG, None) or default_config or _DEFAULT_CONFIG
    if not isinstance(config, SparseAttentionConfig):
        raise TypeError(
            f"{OPTIONS_KWARG}= must be a SparseAttentionConfig, got {type(config).__name__}"
        )
    window = (
        sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
    )
    q_len = query.shape[2]
    decode_state = kwargs.pop(DECODE_KWARG, None)
    if decode_state is not None and q_len == 1 and attention_mask is None and window is None:
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        out = _tidal_decode(module, query, key, value, decode_state, scale)
        if out is not None:
            return out.transpose(1, 2).contiguous(), None
    sparse = (
        attention_mask is None
        and q_len >= config.min_length
        and getattr(module, "is_causal", True)
        and softcap is None
        and kwargs.get("s_aux") is None
        and kwargs.get("position_bias") is None
        and not (module.training and dropout > 0.0)
        and not kwargs.get("output_attentions", False)
        and (window is None or config.sparse_windows)
    )
    if not sparse:
        return _dense_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            window,
            dropout=dropout,
            scaling=scaling,
            softcap=softcap,
            **kwargs,
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    index = build_layer_index(
        query,
        key,
        config,
        scale=scale,
        sliding_window=window,
        layer_idx=getattr(module, "layer_idx", None),
    )
    out = block_sparse_attn(
        query, key, value, index, scale=scale, window=window, backend=config.backend
    )
    return out.transpose(1, 2).contiguous(), None


def _tidal_decode(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    state: SparseDecodeState,
    scale: float,
) -> torch.Tensor | None:
    """One TidalDecode step of a full-attention layer: ``[B, H, 1, D]``, or None to decode densely."""
    if not isinstance(state, SparseDecodeState):
        raise TypeError(f"{DECODE_KWARG}= must be a SparseDecodeState, got {type(state).__name__}")
    layer = getattr(module, "layer_idx", None)
    s = key.shape[2]
    if layer is None or layer < state.selection_layers[0] or s <= state.budget:
        return None
    if layer in state.selection_layers:
        state.token_idx = select_decode_tokens(
            query,
            key,
            budget=state.budget,
            sink_tokens=state.sink_tokens,
            local_tokens=state.local_tokens,
            scale=scale,
        )
        return None
    idx = state.token_idx
    if idx is None or idx.shape[:2] != key.shape[:2] or int(idx.max()) >= s:
        return None
    return sparse_decode(query, key, value, idx, scale=scale, backend=state.backend)


def sparse_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs: Any,
) -> torch.Tensor | None:
    """Mask function registered as ``folio_sparse``.

    Returns ``None`` when the pattern is plain causal (sliding-window causal) attention whose last
    key is the last query, with no padding: the backend enforces it itself. Otherwise (padding,
    custom or packed masks, static caches) it returns the SDPA boolean mask ``[B, 1, T, S]``.
    """
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    aligned = (
        isinstance(q_offset, int)
        and isinstance(kv_offset, int)
        and kv_offset + kv_length == q_offset + q_length
    )
    unpadded = attention_mask is None or bool(attention_mask.all())
    if allow_is_causal_skip and aligned and unpadded:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function if mask_function is not None else causal_mask_function,
        attention_mask=attention_mask,
        local_size=local_size,
        allow_is_causal_skip=False,
        **kwargs,
    )


def register_sparse_attention(
    config: SparseAttentionConfig | None = None, *, name: str = BACKEND_NAME
) -> str:
    """Register the backend and its mask function with transformers (idempotent).

    Per-call options go through ``forward(..., sparse_attention=config)``. ``generate`` rejects
    keywords the model does not declare, so for it bind the options here instead, under the
    default name or under a name of their own (one name per option set).

    Args:
        config: options used when a call carries none (``SparseAttentionConfig()`` if ``None``).
        name: the ``attn_implementation`` name to register.

    Returns:
        The name to pass as ``attn_implementation``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    forward = (
        functools.partial(sparse_attention_forward, default_config=config)
        if config is not None
        else sparse_attention_forward
    )
    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, sparse_attention_mask)
    return name
