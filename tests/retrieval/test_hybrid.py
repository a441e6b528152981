from __future__ import annotations

from pathlib import Path

import pytest

from retrieval import (
    FusionConfig,
    Hit,
    HybridRetriever,
    IndexMismatchError,
    Normalization,
    PRFConfig,
    RetrievalConfig,
    RetrievalMode,
)

QUERIES = [
    "propeller slipstream wing",
    "retrieval of documents",
    "boundary layer heat",
    "blood pressure",
]


def ids(hits: list[Hit]) -> list[str]:
    return [h.chunk_id for h in hits]


@pytest.fixture
def retriever(corpus, dense_encoder, sparse_encoder) -> HybridRetriever:
    r = HybridRetriever.create(dense_encoder=dense_encoder, sparse_encoder=sparse_encoder)
    r.add(corpus)
    return r


@pytest.mark.parametrize("mode", [RetrievalMode.HYBRID, RetrievalMode.HYBRID_PRF])
@pytest.mark.parametrize("norm", list(Normalization))
def test_sparse_weight_zero_equals_dense_alone(retriever, mode, norm) -> None:
    cfg = RetrievalConfig(
        fusion=FusionConfig(
            bm25_weight=0.0, splade_weight=0.0, dense_weight=1.0, normalization=norm
        ),
        prf=PRFConfig(rocchio_beta=0.0),  # feedback that changes nothing
    )
    dense_only = retriever.with_config(cfg)
    for q in QUERIES:
        assert ids(dense_only.search(q, 5, mode=mode)) == ids(retriever.search(q, 5, mode="dense"))


def test_every_mode_answers(retriever) -> None:
    assert retriever.modes == list(RetrievalMode)
    for mode in RetrievalMode:
        hits = retriever.search(QUERIES[0], 3, mode=mode)
        assert 1 <= len(hits) <= 3
        assert len(set(ids(hits))) == len(hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert retriever.search(QUERIES[0], 3, mode="hybrid-prf")[0].chunk_id in {"c1", "c4"}


def test_prf_is_deterministic_and_differs_from_plain_hybrid(retriever) -> None:
    a = retriever.search(QUERIES[1], 10, mode="hybrid-prf")
    b = retriever.search(QUERIES[1], 10, mode="hybrid-prf")
    assert a == b
    keep = retriever.with_config(RetrievalConfig(prf=PRFConfig(keep_first_pass=1.0)))
    assert len(keep.search(QUERIES[1], 10, mode="hybrid-prf")) > 0


def test_modes_need_their_encoders(corpus, dense_encoder) -> None:
    bm25_only = HybridRetriever.create()
    bm25_only.add(corpus)
    assert bm25_only.modes == [RetrievalMode.BM25, RetrievalMode.HYBRID, RetrievalMode.HYBRID_PRF]
    assert ids(bm25_only.search("slipstream", 5, mode="hybrid")) == ids(
        bm25_only.search("slipstream", 5, mode="bm25")
    )
    with pytest.raises(ValueError, match="dense encoder"):
        bm25_only.search("x", 3, mode="dense")
    with pytest.raises(ValueError, match="SPLADE"):
        bm25_only.search("x", 3, mode="splade")
    with pytest.raises(ValueError, match="unknown mode"):
        bm25_only.search("x", 3, mode="magic")


def test_empty_retriever_and_no_match(dense_encoder) -> None:
    r = HybridRetriever.create(dense_encoder=dense_encoder)
    for mode in r.modes:
        assert r.search("anything", 5, mode=mode) == []


def test_add_delete_reach_every_index(retriever) -> None:
    assert retriever.delete(["c1", "c4", "nope"]) == 2
    for mode in RetrievalMode:
        assert not {"c1", "c4"} & set(ids(retriever.search(QUERIES[0], 10, mode=mode)))
    retriever.add([("c1", "A wing in a propeller slipstream")])
    for mode in RetrievalMode:
        assert "c1" in ids(retriever.search(QUERIES[0], 10, mode=mode))
    assert len(retriever) == 9


def test_allowed_restricts_every_mode(retriever) -> None:
    allowed = {"c5", "c6", "c8"}
    for mode in RetrievalMode:
        assert set(ids(retriever.search(QUERIES[1], 10, mode=mode, allowed=allowed))) <= allowed


def test_round_trip(tmp_path: Path, retriever, dense_encoder, sparse_encoder) -> None:
    retriever.delete(["c9"])
    retriever.save(tmp_path)
    loaded = HybridRetriever.load(
        tmp_path, dense_encoder=dense_encoder, sparse_encoder=sparse_encoder
    )
    for mode in RetrievalMode:
        for q in QUERIES:
            assert loaded.search(q, 5, mode=mode) == retriever.search(q, 5, mode=mode)
    bm25_only = HybridRetriever.load(tmp_path)
    assert bm25_only.modes[0] == RetrievalMode.BM25 and len(bm25_only) == 9
    with pytest.raises(FileNotFoundError):
        HybridRetriever.load(tmp_path / "none")
    HybridRetriever.create().save(tmp_path / "sparse-only")
    with pytest.raises(IndexMismatchError, match="no dense index"):
        HybridRetriever.load(tmp_path / "sparse-only", dense_encoder=dense_encoder)


def test_with_config_rejects_index_settings(retriever) -> None:
    from retrieval import BM25Config, DenseConfig

    with pytest.raises(ValueError):
        retriever.with_config(RetrievalConfig(bm25=BM25Config(stemmer=None)))
    with pytest.raises(ValueError):
        retriever.with_config(RetrievalConfig(dense=DenseConfig(hnsw_m=8)))
