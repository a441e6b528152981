"""Evidence gathering: what the model will read for a question, from the stored library.

`retrieved`: the index's best chunks; with the sampler on, their blocks, the blocks next to them
and the figures and tables of their pages compete in the WuKong sampler under the token budget
(kept blocks in reading order, neighbouring paragraphs of a page merged into one item); with it
off, the chunks' text in rank order under the same budget. `first_pages`: the documents from
page 1, one item per page, cut to the budget. The SQL readers of blocks and pages live here too.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

from sqlalchemy import and_, func, or_, select

from models.generator import Generator
from models.sampler import Candidate, EvidenceSampler, SampleResult
from pipeline.answering.prompt import token_counter
from pipeline.answering.types import BlockRow, EvidenceItem, StageStats
from pipeline.config import AnswerConfig
from pipeline.library.block_vectors import fill_sampler_cache, page_candidates
from pipeline.library.owners import has_owners, owner_clause
from pipeline.library.search import LibraryIndex, SearchHit
from storage import Block, Chunk, Document, DocumentStatus, Library

logger = logging.getLogger(__name__)

__all__ = ["EvidenceGatherer", "Gathered", "truncate"]

_WORD = re.compile(r"\w+")
_FIGURES = frozenset({"figure", "table"})
_FIRST_PAGES_STEP = 8  # pages read from the database at a time

Gathered = tuple[list[EvidenceItem], list[SearchHit], tuple[StageStats, ...]]
"""(evidence items, retrieved hits in rank order, the stages' stats)."""


class EvidenceGatherer:
    """Reads a question's evidence from the library and its index.

    Args:
        library: The open library.
        index: Its search index.
    """

    def __init__(self, library: Library, index: LibraryIndex) -> None:
        self.library = library
        self.index = index

    # ------------------------------------------------------------------------------- stages

    def retrieved(
        self,
        question: str,
        docs: Sequence[str] | None,
        owner: str | None,
        cfg: AnswerConfig,
        generator: Generator,
        sampler: Callable[[], EvidenceSampler],
        say: Callable[[str], None] = lambda _status: None,
    ) -> Gathered:
        """Retrieve, then sample (or take the chunks in rank order) under the budget.

        Args:
            sampler: Gives the sampler (only asked for with the sampler on).
            say: Told as the sampling (or budgeting) starts.
        """
        t0 = time.perf_counter()
        hits = self.index.search(
            question, k=cfg.k, mode=cfg.retrieval_mode, doc_ids=docs, owner=owner
        )
        scope_items, scope_tokens = self._scope_size(docs, owner)
        retrieve = StageStats(
            "retrieve", len(hits), scope_items, sum(_chunk_tokens(h) for h in hits),
            scope_tokens, (time.perf_counter() - t0) * 1000,
        )  # fmt: skip
        if not hits:
            return [], hits, (retrieve,)
        if not cfg.use_sampler:
            say("Fitting the retrieved chunks to the budget…")
            items, budget = self._ranked_chunks(hits, cfg, generator)
            return items, hits, (retrieve, budget)

        say("Sampling evidence (WuKong)…")
        t1 = time.perf_counter()
        candidates, rows, positions = self._candidates(hits, cfg)
        candidates_ms = (time.perf_counter() - t1) * 1000
        chosen = sampler()
        t2 = time.perf_counter()
        read, embedded = fill_sampler_cache(self.library, chosen, candidates)
        vectors_ms = (time.perf_counter() - t2) * 1000
        logger.debug("block vectors: %d stored, %d embedded (%.0f ms)", read, embedded, vectors_ms)
        sample = chosen.sample(
            question,
            candidates,
            token_budget=cfg.token_budget,
            with_images=generator.is_multimodal,
        )
        stages = (
            retrieve,
            StageStats(
                "candidates", len(candidates), len(candidates), sample.total_tokens,
                sample.total_tokens, candidates_ms,
            ),
            StageStats(
                "sample", len(sample.kept), len(candidates), sample.kept_tokens,
                sample.total_tokens, vectors_ms + sample.total_ms,
            ),
        )  # fmt: skip
        if sample.image_duplicates:
            logger.debug("sampler dropped %d near-duplicate figures", sample.image_duplicates)
        return _group(sample, rows, positions, generator.is_multimodal), hits, stages

    def first_pages(
        self,
        docs: Sequence[str] | None,
        owner: str | None,
        cfg: AnswerConfig,
        generator: Generator,
    ) -> tuple[list[EvidenceItem], StageStats]:
        """The documents from page 1, one item per page, cut to the budget.

        Raises:
            ValueError: No document given and the owner's library holds other than one.
        """
        t0 = time.perf_counter()
        count = token_counter(generator)
        if docs is None:
            with self.library.sessions() as session:
                ok = list(
                    session.scalars(
                        select(Document.id)
                        .where(Document.status == DocumentStatus.OK)
                        .where(owner_clause(self.library, owner))
                    )
                )
            if len(ok) != 1:
                raise ValueError(
                    "first-pages context (no retrieval) needs the document: pass doc_ids "
                    f"(--doc ID); the library holds {len(ok)} documents"
                )
            docs = ok
        items: list[EvidenceItem] = []
        remaining = cfg.token_budget
        pages_read = total = 0
        step = _FIRST_PAGES_STEP
        for doc_id in docs:
            for first in range(1, self._page_count(doc_id) + 1, step):
                if remaining <= 0:
                    break
                by_page = self._page_range(doc_id, first, first + step - 1)
                for (_, page), blocks in sorted(by_page.items()):
                    pages_read += 1
                    figure_orders = {b.reading_order for b in blocks if b.kind in _FIGURES}
                    kept = [
                        b
                        for b in blocks
                        if b.text.strip()
                        and not (b.kind == "caption" and b.caption_of in figure_orders)
                    ]
                    if not kept or remaining <= 0:
                        continue
                    text = "\n".join(b.text.strip() for b in kept)
                    tokens = count(text)
                    total += tokens
                    if tokens > remaining:
                        if remaining < cfg.sampler.min_item_tokens:
                            remaining = 0
                            continue
                        text = truncate(text, remaining, count)
                        tokens = count(text)
                    remaining -= tokens
                    items.append(
                        EvidenceItem(
                            doc_id, page, "text", tuple(kept), text, 0.0, rank=len(items),
                            tokens=tokens,
                        )
                    )  # fmt: skip
            if remaining <= 0:
                break
        stage = StageStats(
            "first-pages", len(items), pages_read, sum(i.tokens for i in items), total,
            (time.perf_counter() - t0) * 1000,
        )  # fmt: skip
        return items, stage

    def file_names(self, doc_ids: Collection[str]) -> dict[str, str]:
        """The file name of each document."""
        if not doc_ids:
            return {}
        with self.library.sessions() as session:
            rows = session.execute(
                select(Document.id, Document.file_name).where(Document.id.in_(list(doc_ids)))
            )
            return {doc_id: name for doc_id, name in rows}

    # ---------------------------------------------------------------------------- retrieved

    def _ranked_chunks(
        self, hits: list[SearchHit], cfg: AnswerConfig, generator: Generator
    ) -> tuple[list[EvidenceItem], StageStats]:
        """The retrieved chunks in rank order under the budget (the no-sampler path)."""
        t0 = time.perf_counter()
        count = token_counter(generator)
        rows = self._blocks([b for h in hits for b in h.block_ids])
        items: list[EvidenceItem] = []
        remaining = cfg.token_budget
        total = 0
        for rank, hit in enumerate(hits):
            blocks = [rows[b] for b in hit.block_ids if b in rows]
            if not blocks:
                continue
            text = hit.text.strip()
            image = next(
                (b.asset for b in blocks if b.kind in _FIGURES and b.asset is not None), None
            )
            image = image if generator.is_multimodal else None
            image_cost = cfg.sampler.image_token_cost if image is not None else 0
            tokens = count(text) + image_cost
            total += tokens
            if tokens > remaining:
                if image is not None or remaining < cfg.sampler.min_item_tokens:
                    continue
                text = truncate(text, remaining, count)
                tokens = count(text)
            remaining -= tokens
            items.append(
                EvidenceItem(
                    hit.doc_id, hit.page, hit.kind if hit.kind in _FIGURES else "text",
                    tuple(blocks), text, float(hit.score), rank=rank, tokens=tokens, image=image,
                )
            )  # fmt: skip
        stage = StageStats(
            "budget", len(items), len(hits), sum(i.tokens for i in items), total,
            (time.perf_counter() - t0) * 1000,
        )  # fmt: skip
        return items, stage

    def _candidates(
        self, hits: list[SearchHit], cfg: AnswerConfig
    ) -> tuple[list[Candidate], dict[int, BlockRow], dict[int, int]]:
        """Sampler candidates: the hits' blocks, their neighbours, their pages' figures.

        Returns:
            (candidates, block rows by id, position of each block in its page's reading order).
        """
        pages: list[tuple[str, int]] = []
        for hit in hits:
            if (hit.doc_id, hit.page) not in pages:
                pages.append((hit.doc_id, hit.page))
        by_page = self._page_blocks(pages)
        doc_rank = {d: i for i, d in enumerate(dict.fromkeys(h.doc_id for h in hits))}
        rows: dict[int, BlockRow] = {}
        positions: dict[int, int] = {}
        chosen: set[int] = set()
        for blocks in by_page.values():
            for pos, block in enumerate(blocks):
                rows[block.id] = block
                positions[block.id] = pos
            if cfg.page_figures:
                chosen.update(b.id for b in blocks if b.kind in _FIGURES)
        for hit in hits:
            page_blocks = by_page.get((hit.doc_id, hit.page), [])
            for block_id in hit.block_ids:
                if block_id not in positions:
                    continue
                pos = positions[block_id]
                lo, hi = max(0, pos - cfg.neighbours), pos + cfg.neighbours + 1
                chosen.update(b.id for b in page_blocks[lo:hi])
        candidates = []
        for blocks in by_page.values():
            if blocks:
                candidates += page_candidates(blocks, chosen, doc_rank[blocks[0].doc_id])
        return candidates, rows, positions

    # ------------------------------------------------------------------------------ storage

    def _scope_size(self, docs: Sequence[str] | None, owner: str | None) -> tuple[int, int]:
        """(chunks, estimated tokens) that retrieval searched."""
        query = select(func.count(Chunk.id), func.coalesce(func.sum(Chunk.token_count), 0))
        if docs is not None:
            query = query.where(Chunk.doc_id.in_(docs))
        elif owner is not None or has_owners(self.library):
            query = query.join(Document, Document.id == Chunk.doc_id).where(
                owner_clause(self.library, owner)
            )
        with self.library.sessions() as session:
            n, tokens = session.execute(query).one()
        return int(n), int(tokens)

    def _blocks(self, ids: Sequence[int]) -> dict[int, BlockRow]:
        if not ids:
            return {}
        with self.library.sessions() as session:
            return {
                b.id: self._row(b)
                for b in session.scalars(select(Block).where(Block.id.in_(list(set(ids)))))
            }

    def _page_blocks(
        self, pages: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], list[BlockRow]]:
        """Blocks of each (doc, page), in reading order, keyed in the order given."""
        if not pages:
            return {}
        condition = or_(*(and_(Block.doc_id == d, Block.page == p) for d, p in pages))
        with self.library.sessions() as session:
            found = [self._row(b) for b in session.scalars(select(Block).where(condition))]
        out: dict[tuple[str, int], list[BlockRow]] = {key: [] for key in pages}
        for row in sorted(found, key=lambda r: r.reading_order):
            out[(row.doc_id, row.page)].append(row)
        return out

    def _page_range(
        self, doc_id: str, first: int, last: int
    ) -> dict[tuple[str, int], list[BlockRow]]:
        with self.library.sessions() as session:
            found = [
                self._row(b)
                for b in session.scalars(
                    select(Block)
                    .where(Block.doc_id == doc_id, Block.page >= first, Block.page <= last)
                    .order_by(Block.page, Block.reading_order)
                )
            ]
        out: dict[tuple[str, int], list[BlockRow]] = {}
        for row in found:
            out.setdefault((row.doc_id, row.page), []).append(row)
        return out

    def _page_count(self, doc_id: str) -> int:
        with self.library.sessions() as session:
            return int(
                session.scalar(select(Document.page_count).where(Document.id == doc_id)) or 0
            )

    def _row(self, block: Block) -> BlockRow:
        return BlockRow(
            id=block.id,
            doc_id=block.doc_id,
            page=block.page,
            kind=str(block.kind),
            bbox=(float(block.x0), float(block.y0), float(block.x1), float(block.y1)),
            text=block.text or "",
            reading_order=block.reading_order,
            asset=self.library.asset_path(block.asset) if block.asset else None,
            caption_of=block.caption_of,
        )


# ------------------------------------------------------------------------------- helpers


def truncate(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest word prefix of `text` within `budget` tokens, ending with an ellipsis."""
    words = text.split(" ")
    low, high = 0, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid]) + " …") <= budget:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low]) + " …" if low else ""


def _chunk_tokens(hit: SearchHit) -> int:
    return len(_WORD.findall(hit.text))


def _group(
    sample: SampleResult,
    rows: Mapping[int, BlockRow],
    positions: Mapping[int, int],
    multimodal: bool,
) -> list[EvidenceItem]:
    """Kept blocks -> evidence items: neighbouring paragraphs of a page merge into one item,
    ranked by score."""
    items: list[EvidenceItem] = []
    for kept in sample.kept:
        row = rows[kept.candidate.id]
        pos = positions[row.id]
        figure = row.kind in _FIGURES
        last = items[-1] if items else None
        if (
            last is not None
            and not figure
            and last.kind == "text"
            and (last.doc_id, last.page) == (row.doc_id, row.page)
            and last.positions[-1] + 1 == pos
        ):
            items[-1] = replace(
                last,
                blocks=(*last.blocks, row),
                text=f"{last.text}\n{kept.text}",
                score=max(last.score, kept.score),
                tokens=last.tokens + kept.tokens,
                positions=(*last.positions, pos),
            )
            continue
        items.append(
            EvidenceItem(
                row.doc_id, row.page, row.kind if figure else "text", (row,), kept.text,
                kept.score, tokens=kept.tokens,
                image=row.asset if figure and multimodal else None, positions=(pos,),
            )
        )  # fmt: skip
    ranks = {id(item): rank for rank, item in enumerate(sorted(items, key=lambda i: -i.score))}
    return [replace(item, rank=ranks[id(item)]) for item in items]
