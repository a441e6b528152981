"""Block vectors stored with the library: what the evidence sampler would embed for each block,
embedded at ingest (or by the first question that needs it) and read back at question time.

The sampler scores a candidate by the embedding of `Candidate.scored_text`; `page_candidates`
builds the candidates of a page the one way both ingestion and answering use, so a stored vector
is the vector a question would compute. Each row carries the encoder's name and dimension and a
hash of the text embedded: a vector of another encoder or another text is never used.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from models.sampler import Candidate, EvidenceSampler
from storage import BlockVector, Library

logger = logging.getLogger(__name__)

__all__ = [
    "EncodedBlocks",
    "EncoderIdentity",
    "PageBlock",
    "encode_blocks",
    "encoder_identity",
    "fill_sampler_cache",
    "page_candidates",
    "vector_rows",
]

FIGURES = frozenset({"figure", "table"})
SHORT_FIGURE_TEXT = 40  # a figure or table with less text is scored with the block before it
_CONTEXT_CHARS = 300


class PageBlock(Protocol):
    """What `page_candidates` reads of a block (`BlockRow` fits)."""

    id: int
    doc_id: str
    page: int
    kind: str
    text: str
    reading_order: int
    asset: Path | None
    caption_of: int | None


@dataclass(frozen=True)
class EncoderIdentity:
    """Which encoder made a vector: its name (model and max length) and dimension."""

    name: str
    dim: int


def encoder_identity(encoder: Any) -> EncoderIdentity | None:
    """The identity of a text encoder with a `name` and a `dim` (`MiniLMEncoder` has both);
    None for one without: its vectors are neither stored nor read."""
    name, dim = getattr(encoder, "name", None), getattr(encoder, "dim", None)
    if not isinstance(name, str) or not isinstance(dim, int):
        return None
    return EncoderIdentity(name, dim)


def page_candidates(
    blocks: Sequence[PageBlock], chosen: Container[int] | None = None, doc_rank: int = 0
) -> list[Candidate]:
    """The sampler candidates of one page's blocks (in reading order): the `chosen` ones (None:
    all), less captions of the page's figures (a figure's text starts with its caption); a
    figure or table with little text is scored with the block before it."""
    figure_orders = {b.reading_order for b in blocks if b.kind in FIGURES}
    candidates = []
    for pos, block in enumerate(blocks):
        if chosen is not None and block.id not in chosen:
            continue
        if block.kind == "caption" and block.caption_of in figure_orders:
            continue
        search_text = None
        if block.kind in FIGURES and len(block.text.strip()) < SHORT_FIGURE_TEXT:
            context = " ".join(b.text for b in blocks[max(0, pos - 1) : pos] if b.text)
            search_text = f"{context[:_CONTEXT_CHARS]} {block.text}".strip()
        candidates.append(
            Candidate(
                id=block.id,
                kind=block.kind,
                text=block.text,
                page=block.page,
                reading_order=block.reading_order,
                image=block.asset,
                doc=block.doc_id,
                doc_rank=doc_rank,
                search_text=search_text,
            )
        )
    return candidates


def text_hash(text: str) -> str:
    """A short digest of an embedded text (32 hex characters)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


# ------------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class _Row:
    """A block row being stored (position: its place in the document's block rows)."""

    id: int
    doc_id: str
    page: int
    kind: str
    text: str
    reading_order: int
    asset: Path | None
    caption_of: int | None


EncodedBlocks = dict[int, tuple[str, np.ndarray]]
"""(text embedded, its vector) by block position (at ingest) or block id."""


def encode_blocks(block_rows: Sequence[Mapping[str, Any]], encoder: Any) -> EncodedBlocks:
    """The (text, vector) the sampler would score for each block of a document that has text
    to score, by position in `block_rows` (rows as `storage.Block` columns, any order); the
    distinct texts are embedded in one encoder call."""
    by_page: dict[int, list[_Row]] = {}
    for pos, row in enumerate(block_rows):
        by_page.setdefault(row["page"], []).append(
            _Row(
                pos, row["doc_id"], row["page"], str(row["kind"]), _as_stored(row["text"]),
                row["reading_order"], None, row["caption_of"],
            )
        )  # fmt: skip
    texts: dict[int, str] = {}
    for rows in by_page.values():
        rows.sort(key=lambda r: r.reading_order)
        texts.update((c.id, c.scored_text) for c in page_candidates(rows) if c.scored_text)
    unique = list(dict.fromkeys(texts.values()))  # running headers repeat on every page
    if not unique:
        return {}
    encoded = np.asarray(encoder.encode_documents(unique), dtype=np.float32)
    vectors = dict(zip(unique, encoded, strict=True))
    return {pos: (text, vectors[text]) for pos, text in texts.items()}


def _as_stored(text: str | None) -> str:
    """A block's text as the database gives it back (`storage.models.DocumentText`)."""
    return (text or "").replace("\x00", "\ufffd")


def vector_rows(vectors: EncodedBlocks, identity: EncoderIdentity) -> list[dict[str, Any]]:
    """`block_vectors` rows of (text, vector) by block id, in block id order."""
    return [
        {
            "block_id": block_id,
            "encoder": identity.name,
            "dim": identity.dim,
            "text_hash": text_hash(text),
            "vector": np.asarray(vector, dtype="<f4").tobytes(),
        }
        for block_id, (text, vector) in sorted(vectors.items())
    ]


# ----------------------------------------------------------------------------- questions


def fill_sampler_cache(
    library: Library, sampler: EvidenceSampler, candidates: Sequence[Candidate]
) -> tuple[int, int]:
    """Put the candidates' stored vectors into the sampler's cache (one query), embed the rest
    and store them for the next question (best effort, never failing the question).

    Returns:
        (vectors read from the library, vectors embedded and written back).
    """
    identity = encoder_identity(sampler.text_encoder)
    texts = {c.id: c.scored_text for c in candidates if c.scored_text}
    if identity is None or not texts:
        return 0, 0
    stored = _load(library, texts, identity)
    if stored:
        sampler.cache.add_texts([texts[i] for i in stored], list(stored.values()))
    missing = [i for i in texts if i not in stored]
    if missing:
        vectors = sampler.embed_texts([texts[i] for i in missing])
        _save(library, {i: (texts[i], v) for i, v in zip(missing, vectors, strict=True)}, identity)
    return len(stored), len(missing)


def _load(
    library: Library, texts: Mapping[int, str], identity: EncoderIdentity
) -> dict[int, np.ndarray]:
    """Stored vectors of the blocks whose row matches the encoder and the text, by block id."""
    query = select(BlockVector.block_id, BlockVector.text_hash, BlockVector.vector).where(
        BlockVector.block_id.in_(list(texts)),
        BlockVector.encoder == identity.name,
        BlockVector.dim == identity.dim,
    )
    try:
        with library.sessions() as session:
            rows = list(session.execute(query))
    except SQLAlchemyError as exc:  # a library the question can read without them
        logger.warning("block vectors not read (%s); embedding the candidates", exc)
        return {}
    return {
        block_id: np.frombuffer(vector, dtype="<f4").astype(np.float32)
        for block_id, digest, vector in rows
        if digest == text_hash(texts[block_id]) and len(vector) == 4 * identity.dim
    }


def _save(library: Library, vectors: EncodedBlocks, identity: EncoderIdentity) -> None:
    """Write vectors a question computed, in a short transaction of their own. Rows another
    question wrote meanwhile are kept; blocks deleted meanwhile, a busy or read-only database
    only cost the next question the embedding again."""
    rows = vector_rows(vectors, identity)  # in block id order: concurrent writers never deadlock
    dialect = library.engine.dialect.name
    if dialect == "sqlite":
        statement = sqlite_insert(BlockVector).on_conflict_do_nothing()
    elif dialect == "postgresql":
        statement = postgres_insert(BlockVector).on_conflict_do_nothing()
    else:
        statement = insert(BlockVector)
    # NOTE: on SQLite a question never waits for the write lock (an ingest may hold it for
    # minutes): the write is tried once and skipped when the database is busy.
    sqlite = dialect == "sqlite"
    with library.engine.connect() as connection:
        if sqlite:
            previous = int(connection.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0)
            connection.exec_driver_sql("PRAGMA busy_timeout = 0")
            connection.commit()
        try:
            connection.execute(statement, rows)
            connection.commit()
        except SQLAlchemyError as exc:
            connection.rollback()
            logger.info("block vectors not stored (%s); the next question embeds them again", exc)
        finally:
            if sqlite:
                connection.exec_driver_sql(f"PRAGMA busy_timeout = {previous}")
                connection.commit()
