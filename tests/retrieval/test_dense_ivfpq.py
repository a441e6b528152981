"""IVF-PQ dense index: recall against exact search, deletes, filters, the size tiers, and the
memory-mapped save."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

import retrieval.dense as dense_module
from retrieval import (
    DenseConfig,
    DenseIndex,
    DenseIndexKind,
    HybridRetriever,
    RefineKind,
    RetrievalConfig,
    inspect_saved,
)

D = 32


def clustered(n: int, d: int = D, seed: int = 0, centres: int = 40) -> np.ndarray:
    """Unit vectors around the same random centres for every `seed` (a Gaussian mixture):
    float32 [n, d]."""
    c = np.random.default_rng(d).standard_normal((centres, d))
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ivfpq(**overrides) -> DenseConfig:
    """Small IVF-PQ settings: 32-centroid codebooks train on a few thousand vectors."""
    settings = dict(
        index=DenseIndexKind.IVFPQ,
        ivfpq_threshold=1,
        ivfpq_m=8,
        ivfpq_bits=5,
        ivfpq_nlist=32,
        ivfpq_nprobe=8,
        ivfpq_refine_factor=8,
        ivfpq_train_size=3000,
    )
    return DenseConfig(**(settings | overrides))


def exact_top(vectors: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return np.argsort(-(vectors @ q), kind="stable")[:k].tolist()


def built(
    encoder, n: int = 5000, config: DenseConfig | None = None
) -> tuple[DenseIndex, np.ndarray]:
    vecs = clustered(n)
    index = DenseIndex(encoder, config or ivfpq())
    index.add_vectors([f"v{i}" for i in range(n)], vecs)
    return index, vecs


_READ = """
import re, sys
from pathlib import Path
from retrieval.dense import read_faiss_file

def anon():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssAnon:\\s+(\\d+) kB", status).group(1)) * 1024

before = anon()
index, handle = read_faiss_file(Path(sys.argv[1]), sys.argv[2] == "mmap")
print(anon() - before)
"""


def anon_growth_of_read(path: Path, mmap: bool) -> int:
    """Bytes of anonymous (process-private) memory that reading `path` adds, in a fresh
    process (in this one, memory freed by earlier tests would be reused and hide it)."""
    out = subprocess.run(
        [sys.executable, "-c", _READ, str(path), "mmap" if mmap else "read"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.parametrize("refine", [RefineKind.FP16, RefineKind.SQ8])
def test_ivfpq_recall_against_exact_search(make_dense_encoder, refine: RefineKind) -> None:
    index, vecs = built(make_dense_encoder(dim=D), config=ivfpq(ivfpq_refine=refine))
    assert index.kind == DenseIndexKind.IVFPQ
    queries = clustered(50, seed=1)
    recall = np.mean(
        [
            len(
                {int(h.chunk_id[1:]) for h in index.search_encoded(q, 10)}
                & set(exact_top(vecs, q, 10))
            )
            / 10
            for q in queries
        ]
    )
    assert recall >= 0.95, f"recall@10 {recall:.3f} against exact search"


def test_explicit_ivfpq_is_exact_until_it_can_train(make_dense_encoder) -> None:
    index = DenseIndex(make_dense_encoder(dim=D), ivfpq())
    vecs = clustered(300)
    index.add_vectors([f"v{i}" for i in range(100)], vecs[:100])  # under 4 * 32 vectors
    assert index.kind == DenseIndexKind.FLAT
    index.add_vectors([f"v{i}" for i in range(100, 300)], vecs[100:])
    assert index.kind == DenseIndexKind.IVFPQ
    assert len(index) == 300
    # with a threshold, it trains once the index reaches it (on a sample of all it holds)
    later = DenseIndex(make_dense_encoder(dim=D), ivfpq(ivfpq_threshold=1000))
    more = clustered(1200)
    later.add_vectors([f"v{i}" for i in range(999)], more[:999])
    assert later.kind == DenseIndexKind.FLAT
    later.add_vectors([f"v{i}" for i in range(999, 1200)], more[999:])
    assert later.kind == DenseIndexKind.IVFPQ and len(later) == 1200


def test_ivfpq_m_must_divide_the_dimension(make_dense_encoder) -> None:
    with pytest.raises(ValueError, match="divide"):
        DenseIndex(make_dense_encoder(dim=D), ivfpq(ivfpq_m=7))
    # with index='auto' the largest divisor of 32 not above 7 is used
    auto = DenseIndex(make_dense_encoder(dim=D), DenseConfig(ivfpq_m=7))
    assert auto._pq_m() == 4


def test_auto_goes_flat_hnsw_ivfpq_and_trains_once(make_dense_encoder) -> None:
    cfg = ivfpq(index=DenseIndexKind.AUTO, hnsw_threshold=300, ivfpq_threshold=2000)
    index = DenseIndex(make_dense_encoder(dim=D), cfg)
    vecs = clustered(4000)
    names = [f"v{i}" for i in range(4000)]
    index.add_vectors(names[:200], vecs[:200])
    assert index.kind == DenseIndexKind.FLAT
    index.add_vectors(names[200:1000], vecs[200:1000])
    assert index.kind == DenseIndexKind.HNSW
    index.add_vectors(names[1000:2500], vecs[1000:2500])
    assert index.kind == DenseIndexKind.IVFPQ
    trained = index._trained
    index.add_vectors(names[2500:], vecs[2500:])  # appended, not retrained
    assert index._trained is trained and index._index.ntotal == 4000
    # deletes compact into the same trained index while above half the threshold
    index.delete(names[:2500])
    assert index.kind == DenseIndexKind.IVFPQ and index._trained is trained
    assert index._index.ntotal == 1500
    q = vecs[3000]
    assert index.search_encoded(q, 1)[0].chunk_id == "v3000"
    index.retrain()
    assert index._trained is not trained and index.kind == DenseIndexKind.IVFPQ
    assert index.search_encoded(q, 1)[0].chunk_id == "v3000"


def test_ivfpq_deletes_filters_and_reconstruct(make_dense_encoder, monkeypatch) -> None:
    index, vecs = built(make_dense_encoder(dim=D))
    assert index.search_encoded(vecs[7], 1)[0].chunk_id == "v7"
    assert index.delete(["v7", "v8", "nope"]) == 2
    hits = index.search_encoded(vecs[7], 50)
    assert {"v7", "v8"}.isdisjoint(h.chunk_id for h in hits) and len(hits) == 50

    # query-time settings change on a view; build-time ones need a rebuild
    wide = index.with_config(index.config.model_copy(update={"ivfpq_refine_factor": 64}))
    assert wide._index is index._index
    assert wide.search_encoded(vecs[9], 1)[0].chunk_id == "v9"
    with pytest.raises(ValueError, match="rebuild"):
        index.with_config(index.config.model_copy(update={"ivfpq_m": 4}))

    # vectors() returns the fp16 copy: within fp16 rounding of what was added
    np.testing.assert_allclose(index.vectors(["v1", "v2"]), vecs[1:3], atol=2e-3)

    # a small allowed set is scored exactly; a large one goes through the IVF selector
    small = {f"v{i}" for i in range(100, 140)}
    assert {h.chunk_id for h in index.search_encoded(vecs[120], 10, allowed=small)} <= small
    large = {f"v{i}" for i in range(0, 5000, 2)} - {"v8"}
    hits = index.search_encoded(vecs[3], 10, allowed=large)
    assert len(hits) == 10 and {h.chunk_id for h in hits} <= large

    # an allowed set spread thinly over the cells: IVF finds too few, exact scoring fills in
    monkeypatch.setattr(dense_module, "_EXACT_ALLOWED", 10)
    thin = [f"v{i}" for i in np.random.default_rng(3).choice(5000, 60, replace=False)]
    thin = [c for c in thin if c not in ("v7", "v8")]
    hits = index.search_encoded(vecs[11], 20, allowed=set(thin))
    stored = index.vectors(thin)
    want = [thin[i] for i in exact_top(stored, vecs[11], 20)]
    assert [h.chunk_id for h in hits] == want


def test_ivfpq_save_load_is_memory_mapped(tmp_path: Path, make_dense_encoder) -> None:
    n, d = 40_000, 128
    vecs = clustered(n, d)
    encoder = make_dense_encoder(dim=d)
    cfg = ivfpq(ivfpq_m=16, ivfpq_nlist=64, ivfpq_nprobe=16)
    index = DenseIndex(encoder, cfg)
    names = [f"v{i}" for i in range(n)]
    index.add_vectors(names, vecs)
    index.delete(["v5"])
    queries = clustered(20, d, seed=4)

    index.save(tmp_path)  # compacts first: the deleted slot goes
    before = [index.search_encoded(q, 10) for q in queries]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.faiss", "dense.npz"]
    size = (tmp_path / "dense.faiss").stat().st_size
    assert size > n * d * 2  # the fp16 copy is most of it

    # Reading the file: mapped, process memory hardly grows; read in, by the file's size.
    grew = {mmap: anon_growth_of_read(tmp_path / "dense.faiss", mmap) for mmap in (True, False)}
    assert grew[True] < size / 4 < size / 2 < grew[False], f"{grew} for a {size}-byte file"

    loaded = DenseIndex.load(tmp_path, encoder, cfg)
    assert loaded.memory_mapped and loaded.kind == DenseIndexKind.IVFPQ
    refine = faiss.downcast_index(loaded._index.refine_index)
    assert not refine.codes.is_owned  # the codes are a view of the mapped file
    assert [loaded.search_encoded(q, 10) for q in queries] == before
    assert "v5" not in loaded

    in_memory = DenseIndex.load(tmp_path, encoder, cfg.model_copy(update={"mmap": False}))
    assert not in_memory.memory_mapped
    assert [in_memory.search_encoded(q, 10) for q in queries] == before

    # a change reads the mapped index into memory first (FAISS cannot write to a mapping)
    loaded.add_vectors(["new"], queries[:1])
    assert not loaded.memory_mapped and len(loaded) == n
    assert loaded.search_encoded(queries[0], 1)[0].chunk_id == "new"


def test_hybrid_save_keeps_the_faiss_file_with_its_generation(
    tmp_path: Path, corpus, make_dense_encoder
) -> None:
    cfg = RetrievalConfig(dense=ivfpq(ivfpq_m=4, ivfpq_nlist=4))
    encoder = make_dense_encoder(dim=D)
    retriever = HybridRetriever.create(dense_encoder=encoder, config=cfg)
    texts = [(f"{cid}-{i}", f"{text} copy {i}") for i in range(40) for cid, text in corpus]
    retriever.add(texts)
    assert retriever.dense.kind == DenseIndexKind.IVFPQ
    retriever.save(tmp_path)
    second = retriever.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"bm25.{second}.npz", f"dense.{second}.npz", f"dense.{second}.faiss", "retriever.json"]
    )
    assert inspect_saved(tmp_path).problems == []
    loaded = HybridRetriever.load(tmp_path, dense_encoder=encoder, config=cfg)
    assert loaded.dense.memory_mapped
    q = "boundary layer transition"
    assert loaded.search(q, 5, mode="hybrid") == retriever.search(q, 5, mode="hybrid")

    (tmp_path / f"dense.{second}.faiss").unlink()
    assert any("FAISS" in p for p in inspect_saved(tmp_path).problems)
    with pytest.raises(FileNotFoundError):
        HybridRetriever.load(tmp_path, dense_encoder=encoder, config=cfg)


def test_a_save_cut_short_after_the_faiss_file_leaves_the_previous_one_whole(
    tmp_path: Path, corpus, make_dense_encoder, monkeypatch
) -> None:
    cfg = RetrievalConfig(dense=ivfpq(ivfpq_m=4, ivfpq_nlist=4))
    encoder = make_dense_encoder(dim=D)
    retriever = HybridRetriever.create(dense_encoder=encoder, config=cfg)
    retriever.add([(f"{cid}-{i}", f"{text} copy {i}") for i in range(40) for cid, text in corpus])
    first = retriever.save(tmp_path)
    loaded = HybridRetriever.load(tmp_path, dense_encoder=encoder, config=cfg)
    q = "propeller slipstream"
    want = loaded.search(q, 5, mode="dense")
    retriever.delete(["c1-0"])

    def crash(*_args, **_kwargs) -> None:
        raise OSError("disk full")

    # The FAISS file of the new save is written, then its npz fails: `first` stays current.
    monkeypatch.setattr(dense_module, "write_npz", crash)
    with pytest.raises(OSError):
        retriever.save(tmp_path)
    saved = inspect_saved(tmp_path)
    assert saved.generation == first and not saved.problems
    stray = sorted(p.name for p in saved.stray)  # the unfinished save's bm25 and FAISS files
    assert len(stray) == 2 and stray[0].startswith("bm25.") and stray[1].startswith("dense.")
    assert stray[1].endswith(".faiss") and first not in stray[1]
    monkeypatch.undo()
    second = retriever.save(tmp_path)
    assert not inspect_saved(tmp_path).stray
    assert not (tmp_path / f"dense.{first}.faiss").exists()
    # the index mapped from the first save's file still answers after that file is gone
    assert loaded.dense.memory_mapped and loaded.search(q, 5, mode="dense") == want
    reloaded = HybridRetriever.load(tmp_path, dense_encoder=encoder, config=cfg)
    assert "c1-0" not in reloaded and HybridRetriever.saved_generation(tmp_path) == second


def test_ivf_lists_name_the_ivf_indexes_size_and_none_for_the_others(make_dense_encoder) -> None:
    from retrieval import BM25Index

    flat, _ = built(make_dense_encoder(dim=D), n=500, config=ivfpq(index=DenseIndexKind.FLAT))
    assert flat.ivf_lists is None
    ivf, _ = built(make_dense_encoder(dim=D))
    assert ivf.ivf_lists == 32
    bm25 = BM25Index()
    bm25.add([("a", "apples and pears"), ("b", "pears")])
    assert bm25.posting_counts() == (3, 2)  # appl, pear | pear
