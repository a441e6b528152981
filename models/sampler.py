"""PDF-WuKong sparse sampling: keep the paragraphs and figures most similar to the question.

PDF-WuKong (Xie et al., 2024) does not feed a long document to the model whole: a sparse sampler
scores every paragraph and figure against the question and only the top `k_text` paragraphs and
`k_image` figures go into the prompt. Here:

- paragraphs (text, heading, list and caption blocks) are scored by the cosine similarity of
  their dense embedding (MiniLM) to the question's;
- figures and tables are scored the same way on their caption and the text inside them (the
  parser puts both in the block's text; the caller may add nearby page text as `search_text`).
  The image encoder (EfficientNet-Lite0, ImageNet features) has no text side, so it never scores
  a figure against the question. It is used for one thing it can do: a picture-only figure (no
  caption, no text inside) whose image features nearly match a kept figure's (a logo or
  background repeated on every slide) counts as the same figure and is dropped. Only figures
  without text, and only when the model sees images: measured on the 37 dev documents, ImageNet
  features put different text-heavy figures and tables at cosine >= 0.97 (58 of 158 such figure
  pairs had different text; different tables reach 1.0), so text, not pixels, decides there;
- exact repeats of a paragraph (running headers, slide footers) are kept once;
- items are taken greedily by score under the quotas and a token budget (an item that does not
  fit is cut to the remaining budget when enough remains, else skipped for smaller ones), and
  returned in reading order with their scores, alongside every dropped item and why.

The sampler sees plain `Candidate`s; the pipeline builds them from stored blocks.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.config import SamplerConfig

logger = logging.getLogger(__name__)

__all__ = [
    "Candidate",
    "EmbeddingCache",
    "DropReason",
    "DroppedItem",
    "EvidenceSampler",
    "SampleResult",
    "SampledItem",
    "estimate_tokens",
]

FIGURE_KINDS = frozenset({"figure", "table"})
_WORD = re.compile(r"\w+|[^\w\s]")
_SPACE = re.compile(r"\s+")
_BLANKS = re.compile(r"[ \t\r\f\v]+")
_LINES = re.compile(r"\s*\n\s*")
_CACHE_SIZE = 50_000


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (words and punctuation) for when no tokenizer is given."""
    return len(_WORD.findall(text))


class TextEncoder(Protocol):
    """What the sampler needs of a text encoder (`MiniLMEncoder` fits)."""

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """float32 `[N, D]`, rows L2-normalised."""

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """float32 `[N, D]`, rows L2-normalised."""


class ImageEncoder(Protocol):
    """What the sampler needs of an image encoder (`EfficientNetImageEncoder` fits)."""

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """float32 `[N, F]`, rows L2-normalised."""


class EmbeddingCache:
    """Bounded LRU caches of text embeddings (by text) and image features (by path).

    Samplers that share one encoder can share one cache (a batch over the same documents
    embeds each block once). Thread-safe: concurrent questions share it; encoding happens
    outside the lock, so one question's embedding never holds up another's lookups.

    Args:
        max_items: Most entries kept in each cache.
    """

    def __init__(self, max_items: int = _CACHE_SIZE) -> None:
        self.max_items = max_items
        self.texts: OrderedDict[str, np.ndarray] = OrderedDict()
        self.images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def text_vectors(
        self, texts: Sequence[str], encode: Callable[[list[str]], Sequence[np.ndarray]]
    ) -> list[np.ndarray]:
        """The embedding of each text, encoding (with `encode`) only those not cached."""
        with self._lock:
            found = {t: self.texts[t] for t in texts if t in self.texts}
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            for text, vector in zip(missing, encode(missing), strict=True):
                found[text] = np.asarray(vector, dtype=np.float32)
        with self._lock:
            for text in texts:
                self.texts[text] = found[text]
                self.texts.move_to_end(text)
            self._trim(self.texts)
        return [found[t] for t in texts]

    def add_texts(self, texts: Sequence[str], vectors: Sequence[np.ndarray]) -> None:
        """Remember embeddings computed elsewhere (stored at ingest), so `text_vectors` finds
        them instead of encoding the texts."""
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                self.texts[text] = np.asarray(vector, dtype=np.float32)
                self.texts.move_to_end(text)
            self._trim(self.texts)

    def image_vector(self, key: str, encode: Callable[[], np.ndarray | None]) -> np.ndarray | None:
        """The cached features under `key`, else `encode()` (cached unless it returns None)."""
        with self._lock:
            if key in self.images:
                self.images.move_to_end(key)
                return self.images[key]
        vector = encode()
        if vector is not None:
            with self._lock:
                self.images[key] = vector
                self._trim(self.images)
        return vector

    def trim(self) -> None:
        """Forget the least recently used entries beyond `max_items`."""
        with self._lock:
            for table in (self.texts, self.images):
                self._trim(table)

    def _trim(self, table: OrderedDict[str, np.ndarray]) -> None:
        while len(table) > self.max_items:
            table.popitem(last=False)


@dataclass(frozen=True)
class Candidate:
    """One block that may become evidence.

    Attributes:
        id: The block's id (any int unique among the candidates).
        kind: text, heading, list, caption, figure or table.
        text: What the model reads (for a figure: its caption and the text inside it).
        page: 1-based page number.
        reading_order: Position on the page.
        image: The rendered figure (PNG path), for figures and tables.
        doc: Document key; with `doc_rank` it orders candidates of several documents.
        doc_rank: Position of the document in the output order.
        search_text: What is scored against the question, when it should differ from `text`
            (a figure without a caption scored with its page's heading, say).
    """

    id: int
    kind: str
    text: str
    page: int
    reading_order: int
    image: Path | None = None
    doc: str = ""
    doc_rank: int = 0
    search_text: str | None = None

    @property
    def is_figure(self) -> bool:
        """Figures and tables (the `k_image` quota); everything else is a paragraph."""
        return self.kind in FIGURE_KINDS

    @property
    def scored_text(self) -> str:
        """What is embedded and scored against the question ("" for nothing to score)."""
        return _clean(self.search_text if self.search_text is not None else self.text)

    @property
    def order_key(self) -> tuple[int, str, int, int]:
        """Reading order across documents."""
        return (self.doc_rank, self.doc, self.page, self.reading_order)


class DropReason(StrEnum):
    """Why a candidate did not reach the prompt."""

    EMPTY = "empty"  # no usable text (and no image the model could see)
    DUPLICATE = "duplicate"  # same text as, or a near-identical image to, a better item
    QUOTA = "quota"  # k_text paragraphs or k_image figures were already kept
    BUDGET = "budget"  # too long for what was left of the token budget


@dataclass(frozen=True)
class SampledItem:
    """A kept candidate: its score, its cost and the text that goes into the prompt."""

    candidate: Candidate
    score: float
    tokens: int
    text: str
    truncated: bool = False


@dataclass(frozen=True)
class DroppedItem:
    """A candidate left out, with its score and the reason."""

    candidate: Candidate
    score: float
    reason: DropReason


@dataclass(frozen=True)
class SampleResult:
    """What the sampler kept (reading order) and dropped (best score first), and what it cost.

    Attributes:
        kept: Kept items in reading order.
        dropped: Dropped items, best score first.
        total_tokens: Tokens of every candidate (the context without sampling).
        kept_tokens: Tokens charged to the budget by the kept items (images included).
        text_ms: Milliseconds embedding the question and candidates.
        image_ms: Milliseconds computing image features (duplicate check).
        total_ms: Milliseconds in `sample` overall.
    """

    kept: tuple[SampledItem, ...]
    dropped: tuple[DroppedItem, ...]
    total_tokens: int
    kept_tokens: int
    text_ms: float
    image_ms: float
    total_ms: float

    @property
    def image_duplicates(self) -> int:
        """Figures dropped as duplicates (same text, or a text-less image matching a kept one)."""
        return sum(d.reason is DropReason.DUPLICATE and d.candidate.is_figure for d in self.dropped)


class EvidenceSampler:
    """Scores candidate blocks against a question and keeps the best under quotas and a budget.

    Args:
        config: Quotas and thresholds.
        text_encoder: Dense text encoder (L2-normalised vectors), e.g. `MiniLMEncoder`.
        image_encoder: Image encoder for the duplicate-figure check, e.g.
            `EfficientNetImageEncoder`; None skips the check.
        count_tokens: Token count of a text in the answering model's tokenizer (budgets are in
            its tokens); None uses `estimate_tokens`.
        cache: Embedding cache to use (and share); a new one when None.

    Example:
        >>> sampler = EvidenceSampler(SamplerConfig(), MiniLMEncoder())
        >>> result = sampler.sample("How tall is it?", candidates, token_budget=1200)
        >>> [(item.candidate.page, round(item.score, 2)) for item in result.kept]
    """

    def __init__(
        self,
        config: SamplerConfig | None = None,
        text_encoder: TextEncoder | None = None,
        image_encoder: ImageEncoder | None = None,
        *,
        count_tokens: Callable[[str], int] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        if text_encoder is None:
            raise ValueError("EvidenceSampler needs a text encoder (e.g. models.MiniLMEncoder())")
        self.config = config or SamplerConfig()
        self._text = text_encoder
        self._image = image_encoder
        self.count_tokens = count_tokens or estimate_tokens
        self.cache = cache if cache is not None else EmbeddingCache()

    def score(self, question: str, candidates: Sequence[Candidate]) -> np.ndarray:
        """Cosine similarity of each candidate's `search_text or text` to the question.

        Returns:
            float32 `[N]`; 0 for a candidate without text.
        """
        if not question.strip():
            raise ValueError(f"question must be non-empty text, got {question!r}")
        if not candidates:
            return np.zeros(0, dtype=np.float32)
        q = self._text.encode_queries([question])[0]  # [D]
        texts = [c.scored_text for c in candidates]
        vectors = self._embed([t for t in texts if t])  # [M, D]
        out = np.zeros(len(candidates), dtype=np.float32)
        rows = iter(range(len(vectors)))
        for i, text in enumerate(texts):
            if text:
                out[i] = float(vectors[next(rows)] @ q)
        return out

    @property
    def text_encoder(self) -> TextEncoder:
        """The dense text encoder (shared with citation attribution)."""
        return self._text

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Document embeddings `[N, D]` of `texts` (cached, L2-normalised)."""
        cleaned = [_clean(t) or " " for t in texts]
        return self._embed(cleaned) if cleaned else np.zeros((0, 1), dtype=np.float32)

    def sample(
        self,
        question: str,
        candidates: Sequence[Candidate],
        *,
        token_budget: int,
        with_images: bool = False,
    ) -> SampleResult:
        """Keep the top `k_text` paragraphs and `k_image` figures under `token_budget`.

        Args:
            question: The user's question.
            candidates: Blocks to choose from (any order; ids unique).
            token_budget: Most tokens of evidence text (plus `image_token_cost` per image when
                `with_images`).
            with_images: Figures go to the model as images (a vision-language model): their
                image is charged to the budget, and a figure without text may still be kept.

        Returns:
            A `SampleResult`.

        Raises:
            ValueError: Blank question, negative budget, or repeated candidate ids.
        """
        if token_budget < 0:
            raise ValueError(f"token_budget must be >= 0, got {token_budget}")
        ids = [c.id for c in candidates]
        if len(set(ids)) != len(ids):
            raise ValueError("candidate ids must be unique (one candidate per block)")
        cfg = self.config
        start = time.perf_counter()
        scores = self.score(question, candidates)
        text_ms = (time.perf_counter() - start) * 1000
        image_ms = 0.0

        costs = [self._cost(c, with_images) for c in candidates]
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i].order_key))
        kept: list[SampledItem] = []
        dropped: list[DroppedItem] = []
        seen_texts: set[str] = set()
        kept_features: list[np.ndarray] = []
        n_text = n_image = 0
        remaining = token_budget
        for i in order:
            cand, score = candidates[i], float(scores[i])
            text = _clean(cand.text)
            sees_image = with_images and cand.image is not None and cand.is_figure
            if (not text and not sees_image) or (not cand.is_figure and len(text) < cfg.min_chars):
                dropped.append(DroppedItem(cand, score, DropReason.EMPTY))
                continue
            key = _SPACE.sub(" ", text.lower())
            if text and key in seen_texts:
                dropped.append(DroppedItem(cand, score, DropReason.DUPLICATE))
                continue
            if (cand.is_figure and n_image >= cfg.k_image) or (
                not cand.is_figure and n_text >= cfg.k_text
            ):
                dropped.append(DroppedItem(cand, score, DropReason.QUOTA))
                continue
            cost = costs[i]
            fits = cost <= remaining
            cut = not fits and not sees_image and remaining >= cfg.min_item_tokens
            if not fits and not cut:
                dropped.append(DroppedItem(cand, score, DropReason.BUDGET))
                continue
            if (
                sees_image
                and cand.kind == "figure"
                and len(text) < cfg.min_chars
                and cfg.image_features
                and self._image is not None
            ):
                t0 = time.perf_counter()
                features = self._image_features(cand.image)
                image_ms += (time.perf_counter() - t0) * 1000
                if features is not None:
                    if any(
                        float(features @ other) >= cfg.duplicate_image_similarity
                        for other in kept_features
                    ):
                        dropped.append(DroppedItem(cand, score, DropReason.DUPLICATE))
                        continue
                    kept_features.append(features)
            if cut:
                text = self._truncate(text, remaining)
                cost = self.count_tokens(text)
            kept.append(SampledItem(cand, score, cost, text, truncated=cut))
            seen_texts.add(key)
            remaining -= cost
            n_image += cand.is_figure
            n_text += not cand.is_figure
        kept.sort(key=lambda item: item.candidate.order_key)
        return SampleResult(
            kept=tuple(kept),
            dropped=tuple(dropped),
            total_tokens=sum(costs),
            kept_tokens=token_budget - remaining,
            text_ms=text_ms,
            image_ms=image_ms,
            total_ms=(time.perf_counter() - start) * 1000,
        )

    # ----------------------------------------------------------------------------- helpers

    def _cost(self, cand: Candidate, with_images: bool) -> int:
        """Budget tokens of a candidate: its text, plus the image for a VLM."""
        tokens = self.count_tokens(_clean(cand.text)) if cand.text.strip() else 0
        if with_images and cand.is_figure and cand.image is not None:
            tokens += self.config.image_token_cost
        return tokens

    def _truncate(self, text: str, budget: int) -> str:
        """The longest word prefix of `text` within `budget` tokens, marked with an ellipsis."""
        words = text.split(" ")
        low, high = 0, len(words)
        while low < high:
            mid = (low + high + 1) // 2
            if self.count_tokens(" ".join(words[:mid]) + " …") <= budget:
                low = mid
            else:
                high = mid - 1
        return " ".join(words[:low]) + " …" if low else ""

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Document embeddings `[M, D]`, cached by text (batches often share documents)."""
        rows = self.cache.text_vectors(texts, self._text.encode_documents)
        if not rows:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack(rows)

    def _image_features(self, path: Path) -> np.ndarray | None:
        """L2-normalised features of a figure image (cached by path); None if unreadable."""

        def encode() -> np.ndarray | None:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as image:
                    picture = image.convert("RGB")
            except (OSError, UnidentifiedImageError) as exc:
                logger.warning(
                    "figure image %s unreadable (%s); no duplicate check for it", path, exc
                )
                return None
            return self._image.encode_images([picture])[0]

        return self.cache.image_vector(str(path), encode)


def _clean(text: str | None) -> str:
    """Text with runs of spaces folded and blank lines dropped (table rows keep their lines)."""
    return _LINES.sub("\n", _BLANKS.sub(" ", text or "")).strip()
