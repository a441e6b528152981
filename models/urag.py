"""URaG: the LLM's early layers select the evidence; the deeper layers see only what they kept.

URaG (Shi et al.) observes that early decoder layers read the whole context broadly while the deep
layers focus on the evidence, and turns the first `L + 1` layers into an evidence selector:

    embed -> layers 0..L over [instructions, evidence segments, question]
          -> score each segment from layer L -> keep the top ones
          -> delete the other segments' hidden states and their KV entries (every layer)
          -> layers L+1..N over the kept tokens only -> final norm, LM head -> decode

Kept tokens keep the positions they had in the whole prompt (rotary embeddings and causal and
sliding-window masks are computed from those positions), so the deep layers see the kept text
exactly where it stood.

The execution is layer-wise over the model's own modules (`model.get_decoder().layers`, its
`rotary_emb`, `norm` and LM head): no forward is replaced and nothing is copied from transformers.
It works for decoders with the Llama/Qwen2/Gemma 3 structure, including Gemma 3's interleaved
sliding-window and global layers with a rotary embedding per layer type. Masks are explicit
additive masks built from positions, so the model must use an attention backend that honours a
given mask ("sdpa" or "eager"; `folio_sparse` falls back to SDPA for such masks).

Two segment scores:
- `attention`: the attention mass the question's tokens put on each segment at layer L
  (training-free), averaged over heads and question tokens.
- `maxsim`: late interaction (ColBERT MaxSim) between the question's and the segment's layer-L
  hidden states through a small learned projection (`MaxSimProjection`, trained by
  `python -m pipeline.research.urag_train`, weights in `models/weights/`: one file per packaged
  Qwen generator, and the stage takes the one trained on the loaded model, `shipped_projection`).
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.config import UragConfig, UragScorer
from models.generator import Generator, Prompt, PromptInputs

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROJECTION",
    "LayerwiseDecoder",
    "MaxSimProjection",
    "PromptLayout",
    "PrunableCache",
    "Selection",
    "UragPass",
    "UragRunner",
    "attention_mass",
    "fingerprints_match",
    "layout_prompt",
    "maxsim_scores",
    "model_fingerprint",
    "select_top",
    "shipped_projection",
]

WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_PROJECTION = WEIGHTS / "urag_maxsim_qwen2.5-coder-0.5b.pt"
"""The shipped MaxSim projection of the default generator (Qwen2.5-Coder-0.5B, see
`python -m pipeline.research.urag_train`); the other generators' files lie beside it."""


def shipped_projection(model: Any, layer: int, folder: Path | None = None) -> Path:
    """The shipped projection (in `folder`, default `WEIGHTS`) trained on `model`'s states at
    `layer`, else the default file (which the auto scorer then finds unfit: attention mass)."""
    for path in sorted((folder or WEIGHTS).glob("urag_maxsim_*.pt")):
        if MaxSimProjection.load(path).fits(model, layer):
            return path
    return DEFAULT_PROJECTION


# --------------------------------------------------------------------------- prompt layout


@dataclass(frozen=True)
class PromptLayout:
    """Where the evidence segments and the question sit in a tokenised prompt.

    Attributes:
        inputs: The tokenised prompt (`Generator.encode` of the prompt), batch 1.
        segments: `(start, end)` token spans, one per evidence item, in prompt order.
        question: `(start, end)` token span of the question text.
    """

    inputs: PromptInputs
    segments: tuple[tuple[int, int], ...]
    question: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        return self.inputs.num_tokens


def layout_prompt(generator: Generator, prompt: Prompt) -> PromptLayout:
    """Tokenise `prompt` as `generator.encode` does and find its evidence and question spans.

    Args:
        generator: A text generator with a fast tokenizer (it reports character offsets).
        prompt: The prompt; evidence item `i` is rendered as `[i + 1] text`.

    Returns:
        The layout; `inputs` equals `generator.encode(prompt)`.

    Raises:
        ValueError: A vision-language prompt with images, a tokenizer without offsets, or a
            prompt whose rendered text does not hold its evidence verbatim.
    """
    if generator.is_multimodal and prompt.images:
        raise ValueError("URaG here selects text evidence; send figures as text (no images)")
    inputs = generator.encode(prompt)
    text = inputs.text
    tokenizer = generator.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("URaG needs a fast tokenizer (character offsets of tokens)")
    ids_plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = inputs.input_ids[0].tolist()
    offsets = [tuple(o) for o in ids_plain["offset_mapping"]]
    shift = len(ids) - len(ids_plain["input_ids"])
    if shift < 0 or ids[shift:] != list(ids_plain["input_ids"]):
        raise ValueError("could not align the prompt's tokens with their character offsets")
    # Special tokens added in front (a BOS) have no characters: they belong to no span.
    starts = [-1] * shift + [start for start, _ in offsets]

    def token_span(char_start: int, char_end: int) -> tuple[int, int]:
        inside = [i for i, s in enumerate(starts) if char_start <= s < char_end]
        if not inside:
            raise ValueError(f"no token starts inside characters {char_start}..{char_end}")
        return inside[0], inside[-1] + 1

    segments: list[tuple[int, int]] = []
    cursor = 0
    for number, item in enumerate(prompt.evidence, start=1):
        needle = f"[{number}] {item.text}"
        at = text.find(needle, cursor)
        if at < 0:
            raise ValueError(f"evidence [{number}] is not in the rendered prompt verbatim")
        cursor = at + len(needle)
        segments.append(token_span(at, cursor))
    at = text.rfind(prompt.question)
    if at < cursor:
        raise ValueError("the question is not in the rendered prompt after the evidence")
    question = token_span(at, at + len(prompt.question))
    return PromptLayout(inputs=inputs, segments=tuple(segments), question=question)


# ------------------------------------------------------------------------------ KV cache


class PrunableCache:
    """A KV cache whose entries remember their original positions and can be deleted.

    The model's attention modules call `update(k, v, layer_idx)` (the transformers `Cache`
    protocol); `LayerwiseDecoder` sets the positions of the tokens being added before each run.

    Args:
        num_layers: Decoder layers N.
    """

    is_compileable = False

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers  # each [B, H_kv, S, D]
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.positions: list[torch.Tensor | None] = [None] * num_layers  # each [S]
        self._incoming: torch.Tensor | None = None  # positions of the tokens now being run

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `[B, H_kv, T, D]` keys and values to layer `layer_idx`; return the whole layer."""
        assert self._incoming is not None and self._incoming.numel() == key_states.shape[2]
        if self.keys[layer_idx] is None:
            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
            self.positions[layer_idx] = self._incoming
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=2)
            self.positions[layer_idx] = torch.cat([self.positions[layer_idx], self._incoming])
        return self.keys[layer_idx], self.values[layer_idx]

    def kv_positions(self, layer_idx: int, incoming: torch.Tensor) -> torch.Tensor:
        """`[S]` positions layer `layer_idx` will attend over once `incoming` is added."""
        held = self.positions[layer_idx]
        return incoming if held is None else torch.cat([held, incoming])

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the entries at `index` (`[S']`, increasing) in every filled layer."""
        for i, keys in enumerate(self.keys):
            if keys is None:
                continue
            self.keys[i] = keys.index_select(2, index)
            self.values[i] = self.values[i].index_select(2, index)
            self.positions[i] = self.positions[i].index_select(0, index)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        held = self.positions[layer_idx]
        return 0 if held is None else int(held.numel())

    def next_position(self) -> int:
        """The position of the next token (one past the original prompt, not the kept count)."""
        held = self.positions[-1]
        return 0 if held is None else int(held.max()) + 1


# ------------------------------------------------------------------- layer-wise execution


class LayerwiseDecoder:
    """Runs a Hugging Face decoder-only LM one layer range at a time over chosen positions.

    Args:
        model: A causal LM whose decoder (`model.get_decoder()`) has `layers`, `norm` and
            `rotary_emb` (Llama, Qwen2, Gemma 3 text, ...).

    Raises:
        ValueError: A model without that structure.
    """

    def __init__(self, model: Any) -> None:
        decoder = model.get_decoder()
        for name in ("layers", "norm", "rotary_emb"):
            if not hasattr(decoder, name):
                raise ValueError(
                    f"{type(model).__name__}'s decoder has no `{name}`; URaG needs a "
                    "Llama/Qwen2/Gemma-style decoder"
                )
        self.model = model
        self.embed = model.get_input_embeddings()
        self.layers = decoder.layers
        self.norm = decoder.norm
        self.rotary = decoder.rotary_emb
        self.head = model.get_output_embeddings()
        config = model.config.get_text_config(decoder=True)
        self.num_layers = len(self.layers)
        types = getattr(config, "layer_types", None)
        self.layer_types: list[str] = list(types or ["full_attention"] * self.num_layers)
        self.sliding_window: int | None = getattr(config, "sliding_window", None)
        self.final_softcap: float | None = getattr(config, "final_logit_softcapping", None)
        self._rotary_per_type = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self._rotary_fn = getattr(sys.modules[type(self.layers[0].self_attn).__module__],
                                  "apply_rotary_pos_emb", None)  # fmt: skip

    def new_cache(self) -> PrunableCache:
        return PrunableCache(self.num_layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def position_embeddings(
        self, hidden: torch.Tensor, positions: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(cos, sin) per layer type for `[T]` positions, from the model's own rotary module."""
        pos = positions.unsqueeze(0)  # [1, T]
        if self._rotary_per_type:
            return {t: self.rotary(hidden, pos, t) for t in set(self.layer_types)}
        shared = self.rotary(hidden, pos)
        return {t: shared for t in set(self.layer_types)}

    def mask(
        self, layer_type: str, q_pos: torch.Tensor, kv_pos: torch.Tensor
    ) -> torch.Tensor | None:
        """Additive `[1, 1, T, S]` mask: causal by original position, windowed on sliding layers.

        None where SDPA's own causal path is exact (faster): a global layer whose queries are
        all the keys (a prefill into an empty layer; kept positions increase, so causal by
        index is causal by position) or a single query (decoding).
        """
        windowed = (
            layer_type == "sliding_attention"
            and self.sliding_window is not None
            and int(q_pos.max() - kv_pos.min()) >= self.sliding_window
        )
        if (
            not windowed
            and self.model.config._attn_implementation == "sdpa"
            and (q_pos.numel() == 1 or q_pos.numel() == kv_pos.numel())
        ):
            return None
        return self.explicit_mask(layer_type, q_pos, kv_pos)

    def explicit_mask(
        self, layer_type: str, q_pos: torch.Tensor, kv_pos: torch.Tensor
    ) -> torch.Tensor:
        """The additive `[1, 1, T, S]` mask of `mask`, always materialised."""
        allowed = kv_pos.unsqueeze(0) <= q_pos.unsqueeze(1)  # [T, S]
        if layer_type == "sliding_attention" and self.sliding_window is not None:
            allowed &= (q_pos.unsqueeze(1) - kv_pos.unsqueeze(0)) < self.sliding_window
        out = torch.zeros(allowed.shape, dtype=self.dtype, device=q_pos.device)
        out.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return out[None, None]

    @torch.no_grad()
    def run(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cache: PrunableCache,
        layers: range,
    ) -> torch.Tensor:
        """Run `layers` over `[1, T, D]` hidden states at `[T]` positions, filling `cache`.

        Returns:
            `[1, T, D]` hidden states after the last layer of the range.
        """
        rope = self.position_embeddings(hidden, positions)
        masks: dict[tuple[str, int], torch.Tensor | None] = {}
        cache._incoming = positions
        for i in layers:
            kind = self.layer_types[i]
            kv_pos = cache.kv_positions(i, positions)
            key = (kind, kv_pos.numel())
            if key not in masks:
                masks[key] = self.mask(kind, positions, kv_pos)
            hidden = self.layers[i](
                hidden,
                attention_mask=masks[key],
                position_embeddings=rope[kind],
                position_ids=positions.unsqueeze(0),
                cache=cache,
                use_cache=True,
            )
        cache._incoming = None
        return hidden

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[1, T, D]` last-layer hidden states -> `[1, T, V]` logits (final norm, head, softcap)."""
        logits = self.head(self.norm(hidden))
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, cache: PrunableCache | None = None) -> torch.Tensor:
        """All layers over `[1, T]` ids (continuing `cache` if given): `[1, T, V]` logits."""
        cache = cache if cache is not None else self.new_cache()
        start = cache.next_position()
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        hidden = self.run(self.embed(input_ids), positions, cache, range(self.num_layers))
        return self.logits(hidden)

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, cache: PrunableCache) -> torch.Tensor:
        """One token against a (possibly pruned) cache: `[1]`/`[1, 1]` ids -> `[1, V]` logits."""
        tokens = tokens.reshape(1, 1).to(self.embed.weight.device)
        return self.forward(tokens, cache)[:, -1, :]

    @torch.no_grad()
    def question_queries(
        self, layer: int, hidden_in: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Layer `layer`'s rotated queries for some tokens, from that layer's own modules.

        Args:
            layer: Decoder layer index.
            hidden_in: `[1, T, D]` hidden states entering the layer (for the chosen tokens).
            positions: `[T]` their positions.

        Returns:
            `[1, H, T, D_head]` queries as the layer's attention computes them.
        """
        block = self.layers[layer]
        attn = block.self_attn
        if self._rotary_fn is None:
            raise ValueError(f"{type(attn).__module__} has no apply_rotary_pos_emb")
        normed = block.input_layernorm(hidden_in)
        q = attn.q_proj(normed).view(1, normed.shape[1], -1, attn.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):
            q = attn.q_norm(q)
        cos, sin = self.position_embeddings(hidden_in, positions)[self.layer_types[layer]]
        q, _ = self._rotary_fn(q, q, cos, sin)
        return q


# ---------------------------------------------------------------------------------- scores


def attention_mass(
    decoder: LayerwiseDecoder,
    layer: int,
    hidden_in: torch.Tensor,
    positions: torch.Tensor,
    cache: PrunableCache,
    layout: PromptLayout,
) -> torch.Tensor:
    """Attention mass of the question's tokens on each evidence segment at `layer`.

    The layer must already be in `cache`. Sliding-window layers are scored as if global (the
    question would otherwise see only the last window).

    Args:
        decoder: The layer-wise decoder.
        layer: The scoring layer L.
        hidden_in: `[1, T, D]` hidden states entering layer L (the whole prompt).
        positions: `[T]` their positions.
        cache: The cache holding layer L's keys for the whole prompt.
        layout: The prompt's spans.

    Returns:
        `[n_segments]` mass in [0, 1], averaged over heads and question tokens.
    """
    q_start, q_end = layout.question
    q = decoder.question_queries(layer, hidden_in[:, q_start:q_end], positions[q_start:q_end])
    keys = cache.keys[layer]  # [1, H_kv, S, D]
    attn = decoder.layers[layer].self_attn
    groups = q.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(groups, dim=1)  # [1, H, S, D]
    scores = (q.float() @ keys.float().transpose(-1, -2)) * attn.scaling  # [1, H, Tq, S]
    cap = getattr(attn, "attn_logit_softcapping", None)
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    kv_pos = cache.positions[layer]
    causal = kv_pos.unsqueeze(0) <= positions[q_start:q_end].unsqueeze(1)  # [Tq, S]
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1).mean(dim=(0, 1, 2))  # [S]
    return torch.stack([probs[s:e].sum() for s, e in layout.segments])


class MaxSimProjection(nn.Module):
    """Projects layer-L hidden states for late interaction: RMS-normalise, linear, L2-normalise.

    Args:
        hidden_size: The LLM's hidden size D.
        dim: Output dimension d.
        layer: The layer L whose states it was trained on (kept with the weights).
    """

    def __init__(
        self, hidden_size: int, dim: int = 128, layer: int = 4, model: dict | None = None
    ) -> None:
        super().__init__()
        self.layer = layer
        self.model = model  # `model_fingerprint` of the LLM whose states it was trained on
        self.proj = nn.Linear(hidden_size, dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[..., D]` -> `[..., d]` unit vectors."""
        hidden = hidden.float()
        # NOTE: early-layer states carry a few huge "massive activation" channels; RMS scaling
        # keeps them from swamping the projection's input.
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6)
        return nn.functional.normalize(self.proj(hidden), dim=-1)

    def save(self, path: Path, **settings: Any) -> None:
        torch.save(
            {"state_dict": self.state_dict(), "hidden_size": self.proj.in_features,
             "dim": self.proj.out_features, "layer": self.layer, "model": self.model,
             "settings": settings},
            path,
        )  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> MaxSimProjection:
        """Load weights written by `save`.

        Raises:
            ValueError: The file is missing or not a projection.
        """
        if not Path(path).is_file():
            raise ValueError(
                f"no MaxSim projection at {path}; train one with "
                "python -m pipeline.research.urag_train"
            )
        data = torch.load(path, map_location="cpu", weights_only=True)
        module = cls(
            int(data["hidden_size"]), int(data["dim"]), int(data["layer"]), data.get("model")
        )
        module.load_state_dict(data["state_dict"])
        return module.eval()

    def fits(self, model: Any, layer: int) -> bool:
        """Whether it was trained on `model`'s states at `layer` (by `model_fingerprint`)."""
        return self.layer == layer and fingerprints_match(self.model, model_fingerprint(model))


def model_fingerprint(model: Any) -> dict[str, Any]:
    """What identifies an LLM's weights for a projection trained on its hidden states: its shape
    and a checksum of its first token embeddings (two models of the same shape, such as
    Qwen2.5-0.5B and Qwen2.5-Coder-0.5B, differ there)."""
    config = getattr(model.config, "text_config", model.config)
    embedding = model.get_input_embeddings().weight
    return {
        "model_type": str(config.model_type),
        "hidden_size": int(config.hidden_size),
        "num_layers": int(config.num_hidden_layers),
        "embedding_checksum": float(embedding[:256].detach().float().abs().sum()),
    }


def fingerprints_match(trained: dict | None, loaded: dict) -> bool:
    """Equal shapes, and checksums within 1% (the same weights in bf16, fp16 or fp32)."""
    if not trained:
        return False
    same_shape = all(trained.get(k) == loaded[k] for k in ("model_type", "hidden_size", "num_layers"))
    a, b = float(trained.get("embedding_checksum", 0.0)), loaded["embedding_checksum"]
    return same_shape and abs(a - b) <= 0.01 * max(abs(a), abs(b), 1e-12)


def maxsim_scores(
    projection: MaxSimProjection, hidden: torch.Tensor, layout: PromptLayout
) -> torch.Tensor:
    """MaxSim of the question against each segment over projected layer-L hidden states.

    Args:
        projection: The trained projection.
        hidden: `[1, T, D]` hidden states after layer L.
        layout: The prompt's spans.

    Returns:
        `[n_segments]` mean over question tokens of the best cosine within the segment.
    """
    with torch.no_grad():
        q_start, q_end = layout.question
        q = projection(hidden[0, q_start:q_end])  # [Tq, d]
        out = []
        for start, end in layout.segments:
            d = projection(hidden[0, start:end])  # [Ts, d]
            out.append((q @ d.T).max(dim=1).values.mean())
        return torch.stack(out)


def select_top(scores: torch.Tensor, tokens: Sequence[int], config: UragConfig) -> list[int]:
    """Indices (prompt order) of the segments kept: the best `keep` segments, then fewer if the
    `keep_tokens` share of the evidence tokens is reached."""
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    total = sum(tokens)
    kept: list[int] = []
    used = 0
    for i in order:
        if len(kept) >= config.keep:
            break
        if kept and config.keep_tokens < 1.0 and used + tokens[i] > config.keep_tokens * total:
            continue
        kept.append(i)
        used += tokens[i]
    return sorted(kept)


# ----------------------------------------------------------------------------- compute


def prefill_flops(
    config: Any,
    prompt_tokens: int,
    kept_tokens: int | None = None,
    layer: int | None = None,
    *,
    causal: bool = True,
) -> int:
    """FLOPs (2 per multiply-add) of a prefill, plain or pruned by URaG after `layer`.

    Counts the matrix products: per token and layer the attention projections and the MLP; per
    query-key pair the scores and the weighted sum (causal; a sliding-window layer sees at most
    its window); the LM head for the last token only. Norms, rotary and softmax are left out
    (under 1% here).

    Args:
        config: The decoder's Hugging Face text config (hidden_size, num_attention_heads, ...).
        prompt_tokens: Tokens of the whole prompt (T).
        kept_tokens: Tokens the layers after `layer` run on (None: nothing pruned).
        layer: The scoring layer L; layers 0..L run on all T tokens.
        causal: Count the query-key pairs causal attention needs (False: the full square a
            dense kernel computes before masking).
    """
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    window = getattr(config, "sliding_window", None)
    linear = 2 * (
        hidden * heads * head_dim  # q
        + 2 * hidden * kv_heads * head_dim  # k, v
        + heads * head_dim * hidden  # o
        + 3 * hidden * config.intermediate_size  # gate, up, down
    )
    per_pair = 2 * 2 * heads * head_dim  # q.k and p.v

    def pairs(n: int, sliding: bool) -> int:
        if not causal:
            return n * n
        if not sliding or not window or n <= window:
            return n * (n + 1) // 2
        return window * (window + 1) // 2 + (n - window) * window

    total = 2 * hidden * config.vocab_size  # the LM head, last position
    for index in range(layers):
        pruned = kept_tokens is not None and layer is not None and index > layer
        n = kept_tokens if pruned else prompt_tokens
        total += n * linear + pairs(n, types[index] == "sliding_attention") * per_pair
    return total


# ----------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class Selection:
    """What URaG kept of one prompt.

    Attributes:
        kept: Indices of the kept evidence segments (0-based, prompt order).
        scores: Score of every segment.
        prompt_tokens: Tokens of the whole prompt.
        kept_tokens: Tokens the deep layers ran on.
        evidence_tokens: Evidence-segment tokens of the prompt.
        kept_evidence_tokens: Evidence tokens kept.
        layer: The scoring layer L.
        scorer: "attention" or "maxsim".
        ms: Milliseconds of the whole pruned prefill (shallow layers, scoring, deep layers).
    """

    kept: tuple[int, ...]
    scores: tuple[float, ...]
    prompt_tokens: int
    kept_tokens: int
    evidence_tokens: int
    kept_evidence_tokens: int
    layer: int
    scorer: str
    ms: float


class UragRunner:
    """A prefill/decode pair for `Generator.stream` that prunes the evidence after layer L.

    Args:
        generator: The loaded generator (its model runs layer by layer).
        config: Layer, scorer and how much to keep.
        projection: The MaxSim projection (scorer "maxsim"); loaded from `config.projection`
            or, when None, the shipped file trained on this model.

    Example:
        >>> runner = UragRunner(generator, UragConfig(layer=6, keep=4))
        >>> layout = layout_prompt(generator, prompt)
        >>> runner.use(layout)
        >>> text = generator.generate(layout.inputs, runner=runner).text
        >>> runner.selection.kept
    """

    def __init__(
        self,
        generator: Generator,
        config: UragConfig,
        projection: MaxSimProjection | None = None,
    ) -> None:
        self.decoder = LayerwiseDecoder(generator.model)
        if not 0 <= config.layer < self.decoder.num_layers - 1:
            raise ValueError(
                f"URaG layer {config.layer} must be below the last layer "
                f"({self.decoder.num_layers - 1}); use 0..{self.decoder.num_layers - 2}"
            )
        self.projection: MaxSimProjection | None = None
        path = (
            Path(config.projection)
            if config.projection
            else shipped_projection(generator.model, config.layer)
        )
        if config.scorer is UragScorer.AUTO:
            chosen = config.projection is not None or path.is_file()  # a named file must exist
            found = projection or (MaxSimProjection.load(path) if chosen else None)
            if found is not None and found.fits(generator.model, config.layer):
                self.projection, config = found, config.model_copy(update={"scorer": UragScorer.MAXSIM})
            else:
                logger.info(
                    "URaG: %s was not trained on this model at layer %d; scoring by attention "
                    "mass", path.name, config.layer,
                )  # fmt: skip
                config = config.model_copy(update={"scorer": UragScorer.ATTENTION})
        elif config.scorer is UragScorer.MAXSIM:
            self.projection = projection or MaxSimProjection.load(path)
            if self.projection.layer != config.layer:
                raise ValueError(
                    f"the MaxSim projection {path.name} was trained on layer "
                    f"{self.projection.layer}, not {config.layer}; set layer={self.projection.layer}"
                )
            loaded = model_fingerprint(generator.model)
            if self.projection.proj.in_features != loaded["hidden_size"]:
                raise ValueError(
                    f"the MaxSim projection {path.name} reads {self.projection.proj.in_features}-d "
                    f"states, this model's are {loaded['hidden_size']}-d; train one for it "
                    "(python -m pipeline.research.urag_train) or use scorer=attention"
                )
            if not fingerprints_match(self.projection.model, loaded):
                logger.warning("URaG: %s was trained on another model's states", path.name)
        self.config = config  # its scorer resolved: attention or maxsim
        self._pass: UragPass | None = None

    def bind(self, layout: PromptLayout) -> UragPass:
        """A runner for one prompt over these weights, holding that prompt's own selection
        (concurrent questions each bind their own; `use` shares one)."""
        return UragPass(self, layout)

    def use(self, layout: PromptLayout) -> None:
        """The layout of the next prompt `prefill` receives (one question at a time; concurrent
        questions take `bind`)."""
        self._pass = self.bind(layout)

    @property
    def selection(self) -> Selection | None:
        """What the last `prefill` after `use` kept."""
        return self._pass.selection if self._pass is not None else None

    def prefill(self, inputs: PromptInputs, **_: Any) -> tuple[torch.Tensor, PrunableCache]:
        """Pruned prefill of the prompt given to `use`: `([1, V]` logits, the pruned cache)."""
        if self._pass is None:
            raise ValueError("call use(layout_prompt(generator, prompt)) and pass layout.inputs")
        return self._pass.prefill(inputs)

    def decode_step(self, tokens: torch.Tensor, cache: PrunableCache) -> torch.Tensor:
        return self.decoder.decode_step(tokens, cache)

    @torch.no_grad()
    def score(
        self,
        hidden_in: torch.Tensor,
        hidden_out: torch.Tensor,
        positions: torch.Tensor,
        cache: PrunableCache,
        layout: PromptLayout,
    ) -> torch.Tensor:
        """`[n_segments]` scores at layer L from the states entering and leaving it."""
        if self.config.scorer is UragScorer.MAXSIM:
            assert self.projection is not None
            return maxsim_scores(self.projection, hidden_out, layout)
        return attention_mass(self.decoder, self.config.layer, hidden_in, positions, cache, layout)

    @torch.no_grad()
    def run(self, layout: PromptLayout) -> tuple[torch.Tensor, PrunableCache, Selection]:
        """Layers 0..L over the whole prompt, selection, layers L+1..N over the kept tokens."""
        dec, cfg = self.decoder, self.config
        input_ids = layout.inputs.input_ids
        if input_ids is None or input_ids.shape[0] != 1 or layout.inputs.attention_mask is not None:
            raise ValueError("URaG runs one unpadded prompt of token ids")
        cache = dec.new_cache()
        n = input_ids.shape[1]
        positions = torch.arange(n, device=input_ids.device)
        hidden = dec.run(dec.embed(input_ids), positions, cache, range(cfg.layer))
        hidden_in = hidden
        hidden = dec.run(hidden, positions, cache, range(cfg.layer, cfg.layer + 1))
        seg_tokens = [e - s for s, e in layout.segments]
        if layout.segments:
            scores = self.score(hidden_in, hidden, positions, cache, layout)
            kept = select_top(scores, seg_tokens, cfg)
        else:
            scores, kept = torch.zeros(0), []
        drop = torch.zeros(n, dtype=torch.bool)
        for i, (s, e) in enumerate(layout.segments):
            if i not in kept:
                drop[s:e] = True
        keep_index = (~drop).nonzero().squeeze(1).to(input_ids.device)
        if bool(drop.any()):
            cache.keep(keep_index)
            hidden = hidden.index_select(1, keep_index)
            positions = positions.index_select(0, keep_index)
        hidden = dec.run(hidden, positions, cache, range(cfg.layer + 1, dec.num_layers))
        logits = dec.logits(hidden[:, -1:])[:, -1, :]
        selection = Selection(
            kept=tuple(kept),
            scores=tuple(round(float(x), 6) for x in scores),
            prompt_tokens=n,
            kept_tokens=int(keep_index.numel()),
            evidence_tokens=sum(seg_tokens),
            kept_evidence_tokens=sum(seg_tokens[i] for i in kept),
            layer=cfg.layer,
            scorer=str(cfg.scorer),
            ms=0.0,
        )
        return logits, cache, selection


class UragPass:
    """One prompt's pruned prefill over a shared `UragRunner`: the runner for
    `Generator.stream` of one question, and afterwards what it kept.

    Example:
        >>> urag_pass = runner.bind(layout_prompt(generator, prompt))
        >>> generator.generate(urag_pass.layout.inputs, runner=urag_pass)
        >>> urag_pass.selection.kept
    """

    def __init__(self, runner: UragRunner, layout: PromptLayout) -> None:
        self.runner = runner
        self.layout = layout
        self.selection: Selection | None = None

    @torch.no_grad()
    def prefill(self, inputs: PromptInputs, **_: Any) -> tuple[torch.Tensor, PrunableCache]:
        """Pruned prefill: `([1, V]` next-token logits, the pruned cache)."""
        if inputs.input_ids is None or self.layout.inputs.input_ids is not inputs.input_ids:
            raise ValueError("pass the bound layout's inputs (layout.inputs)")
        t0 = time.perf_counter()
        logits, cache, selection = self.runner.run(self.layout)
        self.selection = replace(selection, ms=(time.perf_counter() - t0) * 1000)
        return logits, cache

    def decode_step(self, tokens: torch.Tensor, cache: PrunableCache) -> torch.Tensor:
        return self.runner.decode_step(tokens, cache)
