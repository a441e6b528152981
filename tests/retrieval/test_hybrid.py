from __future__ import annotations

from pathlib import Path

import pytest

from retrieval import (
    DenseIndex,
    FusionConfig,
    Hit,
    HybridRetriever,
    IndexMismatchError,
    Normalization,
    PRFConfig,
    RetrievalConfig,
    RetrievalMode,
    inspect_saved,
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
    query = QUERIES[1]
    prf = retriever.search(query, 10, mode="hybrid-prf")
    assert prf == retriever.search(query, 10, mode="hybrid-prf")
    plain = retriever.search(query, 10, mode="hybrid")
    assert set(ids(prf)) == set(ids(plain))  # the whole corpus, in another order
    assert ids(prf) != ids(plain)
    # The difference is the feedback's: feedback that changes nothing gives the plain run back.
    no_feedback = retriever.with_config(
        RetrievalConfig(
            prf=PRFConfig(rm3_original_weight=1.0, rocchio_beta=0.0, keep_first_pass=0.0)
        )
    )
    same = no_feedback.search(query, 10, mode="hybrid-prf")
    assert ids(same) == ids(plain)
    assert [h.score for h in same] == pytest.approx([h.score for h in plain], abs=1e-6)


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


def test_each_save_is_a_generation_and_older_files_go(tmp_path: Path, retriever) -> None:
    first = retriever.save(tmp_path)
    retriever.delete(["c9"])
    second = retriever.save(tmp_path)
    assert first != second and HybridRetriever.saved_generation(tmp_path) == second
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [f"bm25.{second}.npz", f"dense.{second}.npz", f"splade.{second}.npz", "retriever.json"]
    )
    saved = inspect_saved(tmp_path)
    assert not saved.problems and not saved.stray and saved.generation == second
    assert saved.chunk_ids == set(retriever.bm25.chunk_ids())
    assert set(saved.parts) == {"bm25", "dense", "splade"}


def test_a_save_cut_short_leaves_the_previous_one_whole(
    tmp_path: Path, retriever, dense_encoder, sparse_encoder, monkeypatch
) -> None:
    first = retriever.save(tmp_path)
    retriever.delete(["c1"])

    def crash(*_args, **_kwargs) -> None:
        raise OSError("disk full")

    # BM25 and SPLADE are written, then the dense part fails: the manifest still names `first`.
    monkeypatch.setattr(DenseIndex, "save", crash)
    with pytest.raises(OSError):
        retriever.save(tmp_path)
    assert HybridRetriever.saved_generation(tmp_path) == first
    saved = inspect_saved(tmp_path)
    assert not saved.problems and len(saved.stray) == 2  # the new bm25 and splade parts
    loaded = HybridRetriever.load(tmp_path, dense_encoder=dense_encoder, sparse_encoder=sparse_encoder)
    assert "c1" in loaded and len(loaded) == len(retriever) + 1
    monkeypatch.undo()
    retriever.save(tmp_path)
    assert not inspect_saved(tmp_path).stray


def test_parts_of_two_saves_are_a_torn_index(
    tmp_path: Path, retriever, dense_encoder, sparse_encoder
) -> None:
    """Parts with as many chunks but not the same ones (the length check alone passed these)."""
    old = tmp_path / "old"
    new = tmp_path / "new"
    retriever.save(old)
    retriever.delete(["c1"])
    retriever.add([("c10", "a chunk added later about wings")])
    gen = retriever.save(new)
    # Forge the worst case: an older dense part under the new save's name and stamp.
    stale = DenseIndex.load(old, dense_encoder, generation=HybridRetriever.saved_generation(old))
    stale.save(new, generation=gen)
    with pytest.raises(IndexMismatchError, match="not the same"):
        HybridRetriever.load(new, dense_encoder=dense_encoder, sparse_encoder=sparse_encoder)
    assert inspect_saved(new).problems
    # A part stamped by another save is refused before its chunks are even compared.
    (new / f"splade.{gen}.npz").unlink()
    (old / f"splade.{HybridRetriever.saved_generation(old)}.npz").rename(new / f"splade.{gen}.npz")
    with pytest.raises(IndexMismatchError, match="torn"):
        HybridRetriever.load(new, sparse_encoder=sparse_encoder)


def test_encoded_chunks_added_later_equal_add(corpus, dense_encoder, sparse_encoder) -> None:
    direct = HybridRetriever.create(dense_encoder=dense_encoder, sparse_encoder=sparse_encoder)
    direct.add(corpus)
    staged = HybridRetriever.create(dense_encoder=dense_encoder, sparse_encoder=sparse_encoder)
    encoded = staged.encode_chunks(corpus)
    assert len(staged) == 0  # encoding leaves the index alone
    staged.add_encoded(encoded, only={cid for cid, _ in corpus[:4]})
    assert len(staged) == 4
    staged.add_encoded(encoded)
    for mode in RetrievalMode:
        for q in QUERIES:
            assert staged.search(q, 5, mode=mode) == direct.search(q, 5, mode=mode)
