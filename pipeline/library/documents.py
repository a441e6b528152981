"""The library as the front ends see it: open it, list and delete documents, as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from pipeline.library.owners import owner_clause
from storage import Chunk, Document, Library, SchemaMismatchError, StorageConfig, open_library

__all__ = ["DocumentInfo", "Library", "SchemaMismatchError", "StorageConfig", "list_documents", "open_library"]


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
