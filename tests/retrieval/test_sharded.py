"""Sharded retrieval equals unsharded retrieval: BM25 with global statistics, exact dense,
their fusion; and Ray actors answer as threads do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval import (
    BM25Index,
    DenseConfig,
    DenseIndexKind,
    HybridRetriever,
    RetrievalConfig,
    ShardBackend,
    ShardedRetriever,
    ShardingConfig,
)

_SYLLABLES = ["ab", "ek", "ir", "om", "ul", "ys"]
WORDS = [f"{c}{s}{t}" for c in "bdfgklmnprstvz" for s in _SYLLABLES for t in "nrt"]  # 252
EXACT = RetrievalConfig(dense=DenseConfig(index=DenseIndexKind.FLAT))


def zipf_corpus(n: int = 400, seed: int = 0) -> list[tuple[str, str]]:
    """n chunks of 5 to 40 words drawn with Zipfian frequencies; ids sort in insertion order."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    return [
        (f"d{i:04d}", " ".join(rng.choice(WORDS, size=int(rng.integers(5, 41)), p=p)))
        for i in range(n)
    ]


def queries(n: int = 25, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[:120], size=int(rng.integers(1, 5)))) for _ in range(n)]


def pairs(hits) -> list[tuple[str, float]]:
    return [(h.chunk_id, h.score) for h in hits]


def assert_same_top(got, want) -> None:
    """Equal scores, and equal chunks above the last score (BM25 cuts a tie there anyhow)."""
    assert [h.score for h in got] == [h.score for h in want]
    if want:
        cut = want[-1].score
        assert [h.chunk_id for h in got if h.score > cut] == [
            h.chunk_id for h in want if h.score > cut
        ]


def sharded(corpus, encoder=None, shards: int = 3, backend=ShardBackend.THREADS, config=EXACT):
    out = ShardedRetriever(
        dense_encoder=encoder,
        config=config,
        sharding=ShardingConfig(shards=shards, backend=backend, ray_cpus=0),
    )
    out.add(corpus)
    return out


def test_bm25_with_its_own_statistics_scores_as_before() -> None:
    index = BM25Index()
    index.add(zipf_corpus())
    for q in queries():
        encoded = index.encode_query(q)
        stats = index.statistics(index.term_weights(encoded))
        ids, scores = index.search_arrays(encoded, 20)
        ids2, scores2 = index.search_arrays(encoded, 20, stats=stats)
        assert ids == ids2 and scores.tolist() == scores2.tolist()


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_bm25_equals_unsharded(shards: int) -> None:
    corpus = zipf_corpus()
    index = BM25Index()
    index.add(corpus)
    split = sharded(corpus, shards=shards)
    assert len(split) == len(corpus) and sorted(split.chunk_ids()) == sorted(index.chunk_ids())
    for q in queries():
        assert_same_top(split.search(q, 10, mode="bm25"), index.search(q, 10))
        everything = pairs(split.search(q, len(corpus), mode="bm25"))
        assert everything == pairs(index.search(q, len(corpus)))
    # deleting changes N, lengths and document frequencies on one shard only
    gone = [cid for cid, _ in corpus[::7]]
    assert split.delete(gone) == index.delete(gone) == len(gone)
    for q in queries():
        assert_same_top(split.search(q, 10, mode="bm25"), index.search(q, 10))
    split.close()


def test_shards_with_their_own_statistics_would_disagree() -> None:
    """Why the coordinator sums statistics: each shard's own idf and average length differ."""
    corpus = zipf_corpus()
    split = sharded(corpus, shards=3)
    shard = split._shards[0]
    q = split.encode(queries()[0]).terms
    own = shard.search(q, None, None, 50, None)["bm25"]
    whole = shard.search(q, split._global_stats(q), None, 50, None)["bm25"]
    assert set(own[0]) == set(whole[0])  # the same matches, scored otherwise
    assert not np.allclose(own[1], whole[1][[whole[0].index(c) for c in own[0]]])
    split.close()


@pytest.mark.parametrize(("mode", "tolerance"), [("dense", 1e-6), ("hybrid", 1e-5)])
def test_sharded_exact_dense_and_hybrid_equal_unsharded(dense_encoder, mode: str, tolerance: float) -> None:
    corpus = zipf_corpus()
    single = HybridRetriever.create(dense_encoder=dense_encoder, config=EXACT)
    single.add(corpus)
    split = sharded(corpus, dense_encoder)
    for q in queries():
        want = single.search(q, 10, mode=mode)
        got = split.search(q, 10, mode=mode)
        assert [h.chunk_id for h in got] == [h.chunk_id for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=tolerance)
    split.close()


def test_sharded_prf_does_not_depend_on_the_shard_count(dense_encoder) -> None:
    corpus = zipf_corpus()
    one, three = sharded(corpus, dense_encoder, shards=1), sharded(corpus, dense_encoder)
    for q in queries():
        a, b = one.search(q, 10, mode="hybrid-prf"), three.search(q, 10, mode="hybrid-prf")
        assert [h.chunk_id for h in a] == [h.chunk_id for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
    one.close()
    three.close()


def test_sharded_allowed_delete_and_modes(dense_encoder) -> None:
    corpus = zipf_corpus()
    split = sharded(corpus, dense_encoder)
    allowed = {cid for cid, _ in corpus[100:160]}
    q = queries()[0]
    for mode in ("bm25", "dense", "hybrid", "hybrid-prf"):
        hits = split.search(q, 10, mode=mode, allowed=allowed)
        assert hits and {h.chunk_id for h in hits} <= allowed
    top = split.search(q, 1, mode="hybrid")[0].chunk_id
    split.delete([top])
    assert all(
        top not in {h.chunk_id for h in split.search(q, 50, mode=m)} for m in ("bm25", "dense")
    )
    with pytest.raises(ValueError, match="splade"):
        split.search(q, mode="splade")
    bm25_only = sharded(corpus)
    with pytest.raises(ValueError, match="dense"):
        bm25_only.search(q, mode="dense")
    assert bm25_only.search(q, 5, mode="hybrid") == bm25_only.search(q, 5, mode="hybrid")
    split.close()
    bm25_only.close()


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance on this machine for the module's tests (two CPUs, no dashboard)."""
    import ray

    root = str(Path(__file__).resolve().parents[2])
    # NOTE: the shard actors must import this checkout's `retrieval`, not an installed one.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": root}},
    )
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_shards_answer_as_thread_shards(local_ray, dense_encoder) -> None:
    corpus = zipf_corpus(300)
    threads = sharded(corpus, dense_encoder, shards=2)
    actors = sharded(corpus, dense_encoder, shards=2, backend=ShardBackend.RAY)
    assert len(actors) == len(corpus)
    for q in queries(10):
        for mode in ("bm25", "dense", "hybrid", "hybrid-prf"):
            assert actors.search(q, 10, mode=mode) == threads.search(q, 10, mode=mode)
    gone = [cid for cid, _ in corpus[:30]]
    assert actors.delete(gone) == threads.delete(gone) == 30
    q = queries(1)[0]
    assert actors.search(q, 10, mode="hybrid") == threads.search(q, 10, mode="hybrid")
    actors.close()
    threads.close()
