"""Sparse rows (chunk -> term weights) stored twice: by chunk (for feedback) and by term (for search).

Adds append a segment; deletes mark slots dead (and take them out of the document frequencies at
once); `compact` merges segments and drops dead slots when either grows past a bound.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

_MAX_SEGMENTS = 8
_MAX_DEAD_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class TermWeights:
    """A sparse query: term ids (unique) and their weights."""

    terms: np.ndarray  # [Q] int64
    weights: np.ndarray  # [Q] float32

    @classmethod
    def from_dict(cls, weights: dict[int, float]) -> TermWeights:
        terms = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
        values = np.fromiter(weights.values(), dtype=np.float32, count=len(weights))
        return cls(terms, values)

    def to_dict(self) -> dict[int, float]:
        return dict(zip(self.terms.tolist(), self.weights.tolist(), strict=True))

    def top(self, n: int) -> TermWeights:
        """The n highest-weighted terms."""
        if len(self.terms) <= n:
            return self
        keep = np.argpartition(-self.weights, n - 1)[:n]
        return TermWeights(self.terms[keep], self.weights[keep])


@dataclass(slots=True)
class _Segment:
    start: int  # first global slot
    fw_ptr: np.ndarray  # [n + 1] int64, rows of this segment by local slot
    fw_terms: np.ndarray  # [nnz] int32
    fw_vals: np.ndarray  # [nnz] float32
    inv_ptr: np.ndarray  # [V_seg + 1] int64
    inv_slots: np.ndarray  # [nnz] int32, global slots
    inv_vals: np.ndarray  # [nnz] float32

    @property
    def size(self) -> int:
        return len(self.fw_ptr) - 1

    @classmethod
    def from_rows(cls, start: int, rows: sp.csr_matrix) -> _Segment:
        fw_ptr = rows.indptr.astype(np.int64)
        fw_terms = rows.indices.astype(np.int32)
        fw_vals = rows.data.astype(np.float32)
        n_terms = int(fw_terms.max()) + 1 if len(fw_terms) else 0
        order = np.argsort(fw_terms, kind="stable")
        local = np.repeat(np.arange(rows.shape[0], dtype=np.int32), np.diff(fw_ptr))
        inv_ptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(np.bincount(fw_terms, minlength=n_terms), out=inv_ptr[1:])
        return cls(
            start=start,
            fw_ptr=fw_ptr,
            fw_terms=fw_terms,
            fw_vals=fw_vals,
            inv_ptr=inv_ptr,
            inv_slots=(local[order] + start).astype(np.int32),
            inv_vals=fw_vals[order],
        )


class Postings:
    """Chunk ids mapped to slots, with sparse rows searchable by term and readable by chunk."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._slot: dict[str, int] = {}
        self._alive = np.zeros(0, dtype=bool)
        self._row_sum = np.zeros(0, dtype=np.float32)
        self._df = np.zeros(0, dtype=np.int64)
        self._segments: list[_Segment] = []
        self._starts: list[int] = []
        self._n_dead = 0
        self.version = 0  # bumped by every change of the set of chunks

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._slot

    @property
    def n_slots(self) -> int:
        return len(self._ids)

    @property
    def alive(self) -> np.ndarray:
        """[n_slots] bool."""
        return self._alive

    @property
    def row_sum(self) -> np.ndarray:
        """[n_slots] float32: sum of each row's values (document length for BM25)."""
        return self._row_sum

    @property
    def df(self) -> np.ndarray:
        """[V] int64: live rows holding each term."""
        return self._df

    def chunk_ids(self) -> list[str]:
        return [cid for cid, ok in zip(self._ids, self._alive.tolist(), strict=True) if ok]

    def chunk_id(self, slot: int) -> str:
        return self._ids[slot]

    def slots_of(self, chunk_ids: Collection[str]) -> np.ndarray:
        """Live slots of the given chunk ids (unknown ids are skipped)."""
        found = [self._slot[c] for c in chunk_ids if c in self._slot]
        return np.asarray(found, dtype=np.int64)

    def add(self, chunk_ids: Sequence[str], rows: sp.csr_matrix) -> None:
        """Add rows [N, V]; an id already present is replaced."""
        if len(chunk_ids) != rows.shape[0]:
            raise ValueError(f"{len(chunk_ids)} chunk ids for {rows.shape[0]} rows")
        if len(set(chunk_ids)) != len(chunk_ids):
            raise ValueError("duplicate chunk ids in one add(); pass each chunk once")
        if not chunk_ids:
            return
        self.delete([c for c in chunk_ids if c in self._slot])
        rows = rows.tocsr().astype(np.float32)
        rows.sum_duplicates()
        start = len(self._ids)
        segment = _Segment.from_rows(start, rows)
        self._ids.extend(chunk_ids)
        self._slot.update((cid, start + i) for i, cid in enumerate(chunk_ids))
        self._alive = np.concatenate([self._alive, np.ones(len(chunk_ids), dtype=bool)])
        row_sum = np.asarray(rows.sum(axis=1), dtype=np.float32).reshape(-1)
        self._row_sum = np.concatenate([self._row_sum, row_sum])
        self._bump_df(segment.fw_terms, +1)
        self.version += 1
        self._segments.append(segment)
        self._starts.append(start)
        self._maybe_compact()

    def delete(self, chunk_ids: Collection[str]) -> int:
        """Remove chunks by id; unknown ids are ignored. Returns how many were removed."""
        removed = 0
        for cid in chunk_ids:
            slot = self._slot.pop(cid, None)
            if slot is None:
                continue
            terms, _ = self.row(slot)
            self._bump_df(terms, -1)
            self._alive[slot] = False
            self._n_dead += 1
            removed += 1
        if removed:
            self.version += 1
            self._maybe_compact()
        return removed

    def row(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Term ids [L] and values [L] of one slot."""
        seg = self._segments[bisect.bisect_right(self._starts, slot) - 1]
        local = slot - seg.start
        a, b = seg.fw_ptr[local], seg.fw_ptr[local + 1]
        return seg.fw_terms[a:b], seg.fw_vals[a:b]

    def accumulate(
        self, query: TermWeights, seg_values: Sequence[np.ndarray] | None = None
    ) -> np.ndarray:
        """Scores [n_slots] float32: `sum_t weight_t * value(t, slot)` over the query terms.

        Args:
            query: Term ids and weights.
            seg_values: Per segment, values aligned with its postings to use instead of the
                stored ones (BM25 passes its length-normalised term frequencies).
        """
        n = len(self._ids)
        keep = query.weights != 0
        terms, weights = query.terms[keep], query.weights[keep].astype(np.float32)
        slot_parts: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        for si, seg in enumerate(self._segments):
            ptr = seg.inv_ptr
            inside = terms < len(ptr) - 1
            if not inside.any():
                continue
            t_in, w_in = terms[inside], weights[inside]
            starts, ends = ptr[t_in], ptr[t_in + 1]
            values = seg.inv_vals if seg_values is None else seg_values[si]
            for a, b, w in zip(starts.tolist(), ends.tolist(), w_in.tolist(), strict=True):
                if a < b:
                    slot_parts.append(seg.inv_slots[a:b])
                    val_parts.append(values[a:b] * w)
        if not slot_parts:
            return np.zeros(n, dtype=np.float32)
        # NOTE: one bincount over all postings is several times faster than `scores[slots] += ...`
        # term by term.
        return np.bincount(
            np.concatenate(slot_parts), weights=np.concatenate(val_parts), minlength=n
        ).astype(np.float32)

    def top(
        self, scores: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[list[str], np.ndarray]:
        """The k best live slots with a positive score, best first (ties: earlier slot first).

        Returns:
            Chunk ids and their scores [<= k] float32.
        """
        mask = (scores > 0) & self._alive
        if allowed is not None:
            keep = np.zeros(len(scores), dtype=bool)
            keep[allowed] = True
            mask &= keep
        cand = np.flatnonzero(mask)
        if len(cand) > k:
            part = np.argpartition(-scores[cand], k - 1)[:k]
            cand = cand[part]
        cand = cand[np.lexsort((cand, -scores[cand]))]
        ids = self._ids
        return [ids[s] for s in cand.tolist()], scores[cand]

    @property
    def segments(self) -> list[_Segment]:
        """The term-major segments (read-only use)."""
        return self._segments

    def compact(self) -> None:
        """Merge all segments into one and drop dead slots."""
        live = np.flatnonzero(self._alive)
        if len(self._segments) <= 1 and len(live) == len(self._ids):
            return
        rows = self.to_csr(live)
        ids = [self._ids[s] for s in live.tolist()]
        self._ids = ids
        self._slot = {cid: i for i, cid in enumerate(ids)}
        self._alive = np.ones(len(ids), dtype=bool)
        self._row_sum = self._row_sum[live].copy()
        self._segments = [_Segment.from_rows(0, rows)] if ids else []
        self._starts = [0] if ids else []
        self._n_dead = 0
        self.version += 1

    def to_csr(self, slots: np.ndarray) -> sp.csr_matrix:
        """Rows of the given slots as CSR [len(slots), V]."""
        n_terms = len(self._df)
        if len(slots) == 0:
            return sp.csr_matrix((0, n_terms), dtype=np.float32)
        blocks = []
        for seg in self._segments:
            sel = slots[(slots >= seg.start) & (slots < seg.start + seg.size)] - seg.start
            if len(sel) == 0:
                continue
            mat = sp.csr_matrix((seg.fw_vals, seg.fw_terms, seg.fw_ptr), shape=(seg.size, n_terms))
            blocks.append(mat[sel])
        return sp.vstack(blocks, format="csr", dtype=np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that `from_state` restores (compacts first)."""
        self.compact()
        seg = self._segments[0] if self._segments else _Segment.from_rows(0, sp.csr_matrix((0, 0)))
        return {
            "ids": np.asarray(self._ids, dtype=str),
            "df": self._df,
            "fw_ptr": seg.fw_ptr,
            "fw_terms": seg.fw_terms,
            "fw_vals": seg.fw_vals,
            "inv_ptr": seg.inv_ptr,
            "inv_slots": seg.inv_slots,
            "inv_vals": seg.inv_vals,
            "row_sum": self._row_sum,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray]) -> Postings:
        self = cls()
        self._ids = arrays["ids"].tolist()
        self._slot = {cid: i for i, cid in enumerate(self._ids)}
        self._alive = np.ones(len(self._ids), dtype=bool)
        self._row_sum = arrays["row_sum"].astype(np.float32)
        self._df = arrays["df"].astype(np.int64)
        if self._ids:
            self._segments = [
                _Segment(
                    start=0,
                    fw_ptr=arrays["fw_ptr"],
                    fw_terms=arrays["fw_terms"],
                    fw_vals=arrays["fw_vals"],
                    inv_ptr=arrays["inv_ptr"],
                    inv_slots=arrays["inv_slots"],
                    inv_vals=arrays["inv_vals"],
                )
            ]
            self._starts = [0]
        return self

    def _bump_df(self, terms: np.ndarray, sign: int) -> None:
        if len(terms) == 0:
            return
        counts = np.bincount(terms, minlength=len(self._df))
        if len(counts) > len(self._df):
            self._df = np.concatenate([self._df, np.zeros(len(counts) - len(self._df), np.int64)])
        self._df += sign * counts

    def _maybe_compact(self) -> None:
        if len(self._segments) > _MAX_SEGMENTS or self._n_dead > _MAX_DEAD_FRACTION * max(
            len(self._ids), 1
        ):
            self.compact()
