from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from retrieval import BM25Config, BM25Index, Hit, IndexMismatchError, SpladeConfig, SpladeIndex


def ids(hits: list[Hit]) -> list[str]:
    return [h.chunk_id for h in hits]


def test_bm25_scores_match_the_lucene_formula_by_hand() -> None:
    cfg = BM25Config(k1=1.2, b=0.75, stemmer=None, stopwords=None)
    index = BM25Index(cfg)
    index.add(
        [("a", "apple apple banana"), ("b", "banana cherry"), ("c", "cherry cherry cherry date")]
    )
    n, avgdl = 3, (3 + 2 + 4) / 3

    def term(tf: float, df: int, dl: int) -> float:
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * tf / (tf + cfg.k1 * (1 - cfg.b + cfg.b * dl / avgdl))

    hits = {h.chunk_id: h.score for h in index.search("banana cherry", k=10)}
    assert hits == pytest.approx(
        {
            "a": term(1, 2, 3),
            "b": term(1, 2, 2) + term(1, 2, 2),
            "c": term(3, 2, 4),
        },
        rel=1e-5,
    )
    # a query term repeated counts twice (Lucene sums term clauses)
    twice = {h.chunk_id: h.score for h in index.search("apple apple", k=10)}
    assert twice["a"] == pytest.approx(2 * term(2, 1, 3), rel=1e-5)


def test_k1_and_b_apply_at_query_time() -> None:
    index = BM25Index(BM25Config(stemmer=None, stopwords=None))
    index.add([("a", "xx xx xx yy"), ("b", "xx yy yy yy yy yy yy")])
    other = index.with_config(BM25Config(k1=2.0, b=1.0, stemmer=None, stopwords=None))
    assert index.search("xx", 2)[1].score != pytest.approx(other.search("xx", 2)[1].score)
    with pytest.raises(ValueError, match="stemmer"):
        index.with_config(BM25Config(stemmer=None, stopwords="en"))


def test_stemming_and_stop_words_are_configurable() -> None:
    docs = [("a", "the runner is running"), ("b", "a quiet day")]
    stemmed = BM25Index()
    stemmed.add(docs)
    assert ids(stemmed.search("runs", 5)) == ["a"]
    assert stemmed.search("the", 5) == []  # stop word
    plain = BM25Index(BM25Config(stemmer=None, stopwords=None))
    plain.add(docs)
    assert plain.search("runs", 5) == []
    assert ids(plain.search("the", 5)) == ["a"]
    with pytest.raises(ValueError, match="stemmer"):
        BM25Index(BM25Config(stemmer="klingon"))


def test_no_match_and_empty_index_return_nothing(corpus) -> None:
    index = BM25Index()
    assert index.search("wing", 5) == []
    index.add(corpus)
    assert index.search("zzzz qqqq", 5) == []
    assert index.search("", 5) == []
    with pytest.raises(ValueError, match="k must be"):
        index.search("wing", 0)


def test_incremental_add_and_delete_equal_a_fresh_build(corpus) -> None:
    grown = BM25Index()
    for i in range(0, len(corpus), 3):
        grown.add(corpus[i : i + 3])
    assert grown.delete(["c2", "c9", "nope"]) == 2
    grown.add([("c11", "lift of a wing and a propeller slipstream")])
    grown.add([("c4", "Replaced text about retrieval of documents")])  # upsert
    final = [(c, t) for c, t in corpus if c not in {"c2", "c9", "c4"}]
    final += [("c11", "lift of a wing and a propeller slipstream")]
    final += [("c4", "Replaced text about retrieval of documents")]
    fresh = BM25Index()
    fresh.add(final)
    assert len(grown) == len(fresh) == len(final)
    assert "c2" not in grown and "c4" in grown
    for q in ["wing propeller slipstream", "retrieval of documents", "boundary layer", "cell"]:
        a, b = grown.search(q, 10), fresh.search(q, 10)
        assert ids(a) == ids(b)
        assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-5)


def test_many_small_adds_compact_and_keep_results(corpus) -> None:
    index = BM25Index()
    for cid, text in corpus * 1:
        index.add([(cid, text)])
    for cid, text in corpus[:6]:
        index.add([(cid + "-again", text)])
    index.delete([c for c, _ in corpus[:6]])
    assert len(index._postings._segments) <= 9
    fresh = BM25Index()
    fresh.add(corpus[6:] + [(c + "-again", t) for c, t in corpus[:6]])
    assert ids(index.search("propeller slipstream", 10)) == ids(
        fresh.search("propeller slipstream", 10)
    )


def test_duplicate_ids_and_non_str_ids_raise() -> None:
    index = BM25Index()
    with pytest.raises(ValueError, match="duplicate"):
        index.add([("a", "x"), ("a", "y")])
    with pytest.raises(TypeError, match="str"):
        index.add([(1, "x")])


def test_allowed_restricts_results(corpus) -> None:
    index = BM25Index()
    index.add(corpus)
    assert set(ids(index.search("slipstream", 5))) == {"c1", "c4"}
    assert ids(index.search("slipstream", 5, allowed={"c1", "c5"})) == ["c1"]


def test_bm25_save_load_round_trip(tmp_path: Path, corpus) -> None:
    index = BM25Index()
    index.add(corpus)
    index.delete(["c3"])
    index.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["bm25.npz"]  # no temp files left
    loaded = BM25Index.load(tmp_path)
    assert loaded.chunk_ids() == index.chunk_ids()
    for q in ["boundary layer", "retrieval documents", "wing lift"]:
        assert index.search(q, 10) == loaded.search(q, 10)
    loaded.add([("c3", "laminar boundary layer")])
    assert "c3" in ids(loaded.search("laminar", 3))
    with pytest.raises(IndexMismatchError, match="stemmer"):
        BM25Index.load(tmp_path, BM25Config(stemmer=None))
    with pytest.raises(FileNotFoundError):
        BM25Index.load(tmp_path / "missing")


def test_empty_index_round_trip(tmp_path: Path) -> None:
    BM25Index().save(tmp_path)
    loaded = BM25Index.load(tmp_path)
    assert len(loaded) == 0 and loaded.search("x", 3) == []
    loaded.add([("a", "hello world")])
    assert ids(loaded.search("hello", 3)) == ["a"]


def test_splade_scores_are_dot_products(corpus, sparse_encoder) -> None:
    index = SpladeIndex(sparse_encoder, SpladeConfig(doc_max_terms=1000, query_max_terms=1000))
    index.add(corpus)
    q = "propeller slipstream of the wing"
    qv = sparse_encoder.encode_queries([q]).toarray()[0]
    docs = sparse_encoder.encode_documents([t for _, t in corpus]).toarray()
    expected = docs @ qv
    hits = index.search(q, 10)
    for h in hits:
        i = [c for c, _ in corpus].index(h.chunk_id)
        assert h.score == pytest.approx(expected[i], rel=1e-5)
    assert len(hits) == int((expected > 0).sum())


def test_splade_pruning_keeps_the_top_terms(corpus, sparse_encoder) -> None:
    index = SpladeIndex(sparse_encoder, SpladeConfig(doc_max_terms=3, query_max_terms=2))
    index.add(corpus)
    for row in index.rows([c for c, _ in corpus]):
        assert len(row.terms) <= 3
    assert len(index.encode_query("one two three four five").terms) == 2


def test_splade_incremental_and_round_trip(tmp_path: Path, corpus, sparse_encoder) -> None:
    index = SpladeIndex(sparse_encoder)
    index.add(corpus[:5])
    index.add(corpus[5:])
    index.delete(["c1"])
    index.save(tmp_path)
    loaded = SpladeIndex.load(tmp_path, sparse_encoder)
    assert "c1" not in loaded and len(loaded) == len(corpus) - 1
    assert index.search("propeller slipstream", 5) == loaded.search("propeller slipstream", 5)
    with pytest.raises(IndexMismatchError, match="encoder"):
        SpladeIndex.load(tmp_path, type(sparse_encoder)(name="other"))
    with pytest.raises(ValueError, match="columns"):
        index.add_rows(["x"], np.zeros((1, 5), dtype=np.float32))
