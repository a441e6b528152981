from __future__ import annotations

import math

import pytest

from retrieval import Hit, Normalization, fuse, fuse_rrf, normalize


def run(*pairs: tuple[str, float]) -> list[Hit]:
    return [Hit(c, s) for c, s in pairs]


def ids(hits: list[Hit]) -> list[str]:
    return [h.chunk_id for h in hits]


@pytest.mark.parametrize("norm", list(Normalization))
def test_no_runs_or_only_empty_runs_give_nothing(norm: Normalization) -> None:
    assert fuse([], normalization=norm) == []
    assert fuse([[], []], [0.5, 0.5], normalization=norm) == []


@pytest.mark.parametrize("norm", list(Normalization))
def test_an_empty_run_does_not_change_the_ranking(norm: Normalization) -> None:
    a = run(("x", 3.0), ("y", 2.0), ("z", 1.0))
    assert ids(fuse([a, []], [0.5, 0.5], normalization=norm)) == ["x", "y", "z"]
    assert ids(fuse([[], a], [0.5, 0.5], normalization=norm)) == ["x", "y", "z"]


@pytest.mark.parametrize("norm", list(Normalization))
def test_single_run_keeps_its_order(norm: Normalization) -> None:
    a = run(("b", 0.2), ("a", 0.9), ("c", -1.5))
    assert ids(fuse([a], normalization=norm)) == ["a", "b", "c"]


def test_single_hit_run_maps_to_one() -> None:
    assert fuse([run(("only", 7.0))]) == [Hit("only", 1.0)]


@pytest.mark.parametrize("norm", [Normalization.MINMAX, Normalization.ZSCORE])
def test_all_equal_scores_become_one_and_ties_break_by_id(norm: Normalization) -> None:
    a = run(("b", 2.0), ("c", 2.0), ("a", 2.0))
    hits, floor = normalize(a, norm)
    assert [h.score for h in hits] == [1.0, 1.0, 1.0]
    assert floor == 0.0
    assert ids(fuse([a], normalization=norm)) == ["a", "b", "c"]


def test_fused_ties_break_by_chunk_id() -> None:
    a = run(("d2", 1.0), ("d1", 0.0))
    b = run(("d1", 1.0), ("d2", 0.0))
    fused = fuse([a, b], [0.5, 0.5])
    assert ids(fused) == ["d1", "d2"]
    assert fused[0].score == pytest.approx(fused[1].score)


def test_minmax_interpolation_by_hand() -> None:
    a = run(("x", 10.0), ("y", 5.0), ("z", 0.0))  # -> 1, .5, 0
    b = run(("y", 0.9), ("w", 0.3))  # -> 1, 0 ; x and z missing -> 0
    fused = {h.chunk_id: h.score for h in fuse([a, b], [0.3, 0.7])}
    assert fused == pytest.approx({"x": 0.3, "y": 0.3 * 0.5 + 0.7, "z": 0.0, "w": 0.0})


def test_zscore_uses_the_run_minimum_for_missing_chunks() -> None:
    a = run(("x", 3.0), ("y", 1.0))  # mean 2, std 1 -> +1, -1; floor -1
    b = run(("y", 4.0), ("z", 2.0), ("w", 0.0))  # mean 2, std sqrt(8/3)
    sd = math.sqrt(8 / 3)
    zb = {"y": 2 / sd, "z": 0.0, "w": -2 / sd}
    fused = {
        h.chunk_id: h.score for h in fuse([a, b], [1.0, 1.0], normalization=Normalization.ZSCORE)
    }
    assert fused == pytest.approx(
        {"x": 1.0 + zb["w"], "y": -1.0 + zb["y"], "z": -1.0 + zb["z"], "w": -1.0 + zb["w"]}
    )


def test_rrf_by_hand() -> None:
    a = run(("x", 3.0), ("y", 2.0))
    b = run(("y", 9.0), ("z", 1.0))
    fused = {h.chunk_id: h.score for h in fuse_rrf([a, b], rrf_k=60)}
    assert fused == pytest.approx({"x": 1 / 61, "y": 1 / 62 + 1 / 61, "z": 1 / 62})
    assert ids(fuse([a, b], normalization=Normalization.RRF)) == ["y", "x", "z"]


def test_zero_weight_run_is_ignored() -> None:
    a = run(("x", 1.0), ("y", 0.5), ("z", 0.1))
    b = run(("z", 100.0), ("q", 50.0))
    assert ids(fuse([a, b], [1.0, 0.0])) == ids(fuse([a]))


def test_k_truncates() -> None:
    a = run(("x", 3.0), ("y", 2.0), ("z", 1.0))
    assert ids(fuse([a], k=2)) == ["x", "y"]


def test_bad_weights_raise() -> None:
    a = run(("x", 1.0))
    with pytest.raises(ValueError, match="one weight per run"):
        fuse([a, a], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        fuse([a], [-1.0])


def test_non_finite_scores_raise() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        normalize(run(("x", float("nan")), ("y", 1.0)))
