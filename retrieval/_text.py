"""Word analysis for BM25: lower-case words of two or more characters, stop words, Snowball stems."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence

import Stemmer

logger = logging.getLogger(__name__)

_WORD = re.compile(r"(?u)\b\w\w+\b")

# Lucene's English stop set (the one bm25s calls "en").
STOPWORDS_EN = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    ]
)
_STOPWORDS = {"en": STOPWORDS_EN}


class Analyzer:
    """Text -> list of terms; caches the stem of every word it has seen."""

    def __init__(self, stemmer: str | None = "english", stopwords: str | None = "en") -> None:
        if stopwords is not None and stopwords not in _STOPWORDS:
            raise ValueError(
                f"unknown stop-word list {stopwords!r}; use one of {sorted(_STOPWORDS)} or None"
            )
        try:
            self._stemmer = Stemmer.Stemmer(stemmer) if stemmer else None
        except KeyError as exc:
            raise ValueError(
                f"unknown stemmer language {stemmer!r}; use one of {Stemmer.algorithms()} or None"
            ) from exc
        self._stop = _STOPWORDS[stopwords] if stopwords else frozenset()
        self._cache: dict[str, str | None] = {}
        # NOTE: PyStemmer's Stemmer objects are not thread-safe, and searches analyse queries
        # while an ingest analyses chunks in another thread.
        self._learning = threading.Lock()

    def analyze(self, text: str) -> list[str]:
        """Terms of one text, in order, stop words removed."""
        return self.analyze_batch([text])[0]

    def analyze_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """Terms of each text; stems the new words of the whole batch in one call."""
        words = [_WORD.findall(t.lower()) for t in texts]
        self._learn(w for doc in words for w in doc)
        cache = self._cache
        return [[s for w in doc if (s := cache[w]) is not None] for doc in words]

    def _learn(self, words: Iterable[str]) -> None:
        new = {w for w in words if w not in self._cache}
        if not new:
            return
        keep = [w for w in new if w not in self._stop]
        with self._learning:
            stems = self._stemmer.stemWords(keep) if self._stemmer else keep
        self._cache.update(dict.fromkeys(new & self._stop))
        self._cache.update(zip(keep, stems, strict=True))
