"""The library as the front ends see it: open it, list and delete documents, as plain data."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from pipeline.library.owners import owner_clause
from storage import (
    Chunk,
    Document,
    DocumentStatus,
    Library,
    SchemaMismatchError,
    StorageConfig,
    open_library,
)

__all__ = [
    "DocumentInfo",
    "Library",
    "SchemaMismatchError",
    "StorageConfig",
    "list_documents",
    "open_library",
    "resolve_documents",
]


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: str
    file_name: str
    title: str | None
    pages: int
    chunks: int
    status: str
    error: str | None
    created: datetime


def list_documents(library: Library, *, owner: str | None = None) -> list[DocumentInfo]:
    """Every document of `owner`'s library (None: the local user's), newest first."""
    counts = select(Chunk.doc_id, func.count().label("n")).group_by(Chunk.doc_id).subquery()
    query = (
        select(Document, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.doc_id == Document.id)
        .where(owner_clause(library, owner))
        .order_by(Document.created.desc(), Document.file_name)
    )
    with library.sessions() as session:
        return [
            DocumentInfo(d.id, d.file_name, d.title, d.page_count, n, str(d.status), d.error, d.created)
            for d, n in session.execute(query)
        ]


def resolve_documents(
    library: Library,
    given: Collection[str] | str,
    *,
    owner: str | None = None,
    ready_only: bool = True,
) -> list[str]:
    """Full ids of `owner`'s documents named by id, unique id prefix or file name.

    Args:
        library: The open library.
        given: Ids, id prefixes or file names (one string: one document).
        owner: Whose documents (None: the local user's; pipeline/library/owners.py).
        ready_only: Only documents that ingested fine (those that can answer).

    Returns:
        The ids in the order given, each once.

    Raises:
        LookupError: A name that matches no document of `owner`'s, or several.
    """
    names = [given] if isinstance(given, str) else list(given)
    scope = [owner_clause(library, owner)]
    if ready_only:
        scope.append(Document.status == DocumentStatus.OK)
    out: list[str] = []
    with library.sessions() as session:
        for name in names:
            by_id = select(Document.id).where(Document.id_prefix(name), *scope)
            matches = list(session.scalars(by_id))
            if not matches:
                by_name = select(Document.id).where(Document.file_name == name, *scope)
                matches = list(session.scalars(by_name))
            if len(matches) != 1:
                what = "no document" if not matches else f"{len(matches)} documents"
                raise LookupError(f"{what} with id or file name {name!r} (see `folio docs`)")
            if matches[0] not in out:
                out.append(matches[0])
    return out
