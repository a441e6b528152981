"""Fake encoders (deterministic, no weights) and a small corpus for retrieval tests."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

CORPUS = [
    ("c1", "The wing of the aircraft produces lift in a propeller slipstream."),
    ("c2", "Boundary layer transition on a flat plate at high Mach numbers."),
    ("c3", "Heat transfer in laminar boundary layers with suction."),
    ("c4", "Propeller noise and the slipstream of small aircraft engines."),
    ("c5", "Information retrieval systems rank documents for a query."),
    ("c6", "Ranking documents with BM25 and dense embeddings for retrieval."),
    ("c7", "Supersonic flow around a cone: shock waves and pressure."),
    ("c8", "The running of queries against an inverted index is fast."),
    ("c9", "Cell growth in tissue culture under hormone treatment."),
    ("c10", "Kidney function and blood pressure in hypertensive patients."),
]


def _words(text: str) -> list[str]:
    return re.findall(r"\w\w+", text.lower())


def _bucket(word: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % n


class FakeDenseEncoder:
    """Bag of hashed words through a fixed random projection, L2-normalised."""

    def __init__(self, dim: int = 16, buckets: int = 64, name: str = "fake-dense") -> None:
        rng = np.random.default_rng(0)
        self._proj = rng.standard_normal((buckets, dim)).astype(np.float32)
        self._buckets = buckets
        self._dim = dim
        self._name = name
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        bags = np.zeros((len(texts), self._buckets), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in _words(t):
                bags[i, _bucket(w, self._buckets)] += 1.0
        vecs = bags @ self._proj + 1e-3
        return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)


class FakeSparseEncoder:
    """log1p(count) of hashed words over a vocabulary of 97 terms."""

    def __init__(self, vocab_size: int = 97, name: str = "fake-sparse") -> None:
        self._v = vocab_size
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return self._v

    def _encode(self, texts: Sequence[str]) -> sp.csr_matrix:
        rows, cols = [], []
        for i, t in enumerate(texts):
            for w in _words(t):
                rows.append(i)
                cols.append(_bucket(w, self._v))
        mat = sp.coo_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(texts), self._v)
        ).tocsr()
        mat.data = np.log1p(mat.data).astype(np.float32)
        return mat

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self._encode(texts)

    def encode_documents(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self._encode(texts)


@pytest.fixture
def corpus() -> list[tuple[str, str]]:
    return list(CORPUS)


@pytest.fixture
def dense_encoder() -> FakeDenseEncoder:
    return FakeDenseEncoder()


@pytest.fixture
def make_dense_encoder() -> Callable[..., FakeDenseEncoder]:
    """`FakeDenseEncoder` itself, for tests that need another vector size."""
    return FakeDenseEncoder


@pytest.fixture
def sparse_encoder() -> FakeSparseEncoder:
    return FakeSparseEncoder()


def _write_beir(folder: Path) -> Path:
    """A three-document BEIR folder with two judged queries and one unjudged."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [
        {"_id": "d1", "title": "Wing lift", "text": "The wing of the aircraft produces lift."},
        {"_id": "d2", "title": "", "text": "Boundary layers on flat plates."},
        {"_id": "d3", "title": "Retrieval", "text": "Ranking documents for a query with BM25."},
    ]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = [
        {"_id": "1", "text": "lift of a wing"},
        {"_id": "2", "text": "document ranking"},
        {"_id": "3", "text": "unjudged"},
    ]
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t2\n2\td3\t1\n")
    return folder


@pytest.fixture
def write_beir() -> Callable[[Path], Path]:
    return _write_beir
