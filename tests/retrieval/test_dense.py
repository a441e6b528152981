from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval import DenseConfig, DenseIndex, DenseIndexKind, Hit, IndexMismatchError


def ids(hits: list[Hit]) -> list[str]:
    return [h.chunk_id for h in hits]


def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(vectors: np.ndarray, names: list[str], q: np.ndarray, k: int) -> list[str]:
    scores = vectors @ q
    return [names[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_flat_search_equals_brute_force(dense_encoder) -> None:
    vecs = random_unit(300, dense_encoder.dim)
    names = [f"v{i}" for i in range(300)]
    index = DenseIndex(dense_encoder, DenseConfig(index=DenseIndexKind.FLAT))
    index.add_vectors(names, vecs)
    for q in random_unit(5, dense_encoder.dim, seed=1):
        hits = index.search_encoded(q, 10)
        assert ids(hits) == brute(vecs, names, q, 10)
        assert [h.score for h in hits] == pytest.approx(
            sorted((vecs @ q).tolist(), reverse=True)[:10], abs=1e-5
        )


def test_auto_switches_to_hnsw_at_the_threshold(dense_encoder) -> None:
    cfg = DenseConfig(index=DenseIndexKind.AUTO, hnsw_threshold=100, hnsw_ef_search=256)
    index = DenseIndex(dense_encoder, cfg)
    vecs = random_unit(150, dense_encoder.dim)
    names = [f"v{i}" for i in range(150)]
    index.add_vectors(names[:80], vecs[:80])
    assert index.kind == DenseIndexKind.FLAT
    index.add_vectors(names[80:], vecs[80:])
    assert index.kind == DenseIndexKind.HNSW
    # a generous beam on a tiny graph is exact
    for q in random_unit(5, dense_encoder.dim, seed=2):
        assert ids(index.search_encoded(q, 5)) == brute(vecs, names, q, 5)


@pytest.mark.parametrize("kind", [DenseIndexKind.FLAT, DenseIndexKind.HNSW])
def test_deleted_chunks_never_come_back(dense_encoder, kind: DenseIndexKind) -> None:
    index = DenseIndex(dense_encoder, DenseConfig(index=kind, hnsw_ef_search=256))
    vecs = random_unit(60, dense_encoder.dim)
    names = [f"v{i}" for i in range(60)]
    index.add_vectors(names, vecs)
    q = vecs[7]
    assert index.search_encoded(q, 1)[0].chunk_id == "v7"
    assert index.delete(["v7", "v8", "unknown"]) == 2
    hits = index.search_encoded(q, 60)
    assert "v7" not in ids(hits) and "v8" not in ids(hits)
    assert len(hits) == 58
    keep = [i for i in range(60) if i not in (7, 8)]
    assert ids(hits[:5]) == brute(vecs[keep], [names[i] for i in keep], q, 5)


def test_many_deletes_compact(dense_encoder) -> None:
    index = DenseIndex(dense_encoder, DenseConfig(index=DenseIndexKind.FLAT))
    vecs = random_unit(40, dense_encoder.dim)
    index.add_vectors([f"v{i}" for i in range(40)], vecs)
    index.delete([f"v{i}" for i in range(20)])
    assert index._n_dead == 0 and index._index.ntotal == 20  # rebuilt without dead slots
    assert ids(index.search_encoded(vecs[25], 1)) == ["v25"]


def test_upsert_replaces_the_vector(dense_encoder) -> None:
    index = DenseIndex(dense_encoder)
    vecs = random_unit(3, dense_encoder.dim)
    index.add_vectors(["a", "b"], vecs[:2])
    index.add_vectors(["a"], vecs[2:3])
    assert len(index) == 2
    assert index.search_encoded(vecs[2], 1)[0] == Hit("a", pytest.approx(1.0, abs=1e-5))
    np.testing.assert_allclose(index.vectors(["a"])[0], vecs[2], atol=1e-6)


def test_allowed_is_exact(dense_encoder) -> None:
    index = DenseIndex(dense_encoder, DenseConfig(index=DenseIndexKind.HNSW))
    vecs = random_unit(50, dense_encoder.dim)
    names = [f"v{i}" for i in range(50)]
    index.add_vectors(names, vecs)
    allowed = {"v3", "v10", "v44"}
    q = vecs[0]
    hits = index.search_encoded(q, 10, allowed=allowed | {"missing"})
    sub = [3, 10, 44]
    assert ids(hits) == brute(vecs[sub], [names[i] for i in sub], q, 10)
    assert index.search_encoded(q, 10, allowed=set()) == []


def test_text_add_uses_the_encoder(corpus, dense_encoder) -> None:
    index = DenseIndex(dense_encoder)
    index.add(corpus, batch_size=4)
    assert dense_encoder.calls == 3
    assert index.search(corpus[4][1], 1)[0].chunk_id == corpus[4][0]
    with pytest.raises(ValueError, match="shape"):
        index.add_vectors(["x"], np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="k must"):
        index.search("x", 0)


@pytest.mark.parametrize("kind", [DenseIndexKind.FLAT, DenseIndexKind.HNSW])
def test_round_trip(tmp_path: Path, dense_encoder, kind: DenseIndexKind) -> None:
    index = DenseIndex(dense_encoder, DenseConfig(index=kind))
    vecs = random_unit(30, dense_encoder.dim)
    index.add_vectors([f"v{i}" for i in range(30)], vecs)
    index.delete(["v3"])
    index.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["dense.npz"]
    loaded = DenseIndex.load(tmp_path, dense_encoder, DenseConfig(index=kind))
    assert loaded.kind == kind
    assert loaded.chunk_ids() == index.chunk_ids()
    for q in random_unit(3, dense_encoder.dim, seed=5):
        assert ids(loaded.search_encoded(q, 8)) == ids(index.search_encoded(q, 8))
    loaded.add_vectors(["new"], vecs[3:4])
    assert loaded.search_encoded(vecs[3], 1)[0].chunk_id == "new"
    with pytest.raises(IndexMismatchError, match="encoder"):
        DenseIndex.load(tmp_path, type(dense_encoder)(name="other"))


def test_empty_index(dense_encoder, tmp_path: Path) -> None:
    index = DenseIndex(dense_encoder)
    assert index.search("anything", 5) == []
    index.save(tmp_path)
    assert len(DenseIndex.load(tmp_path, dense_encoder)) == 0
