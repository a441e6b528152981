"""SQLAlchemy 2.0 models of a library: documents, pages, blocks and the chunks retrieval sees.

Every bbox is in PDF points in the page's *displayed* coordinate space (after the page's
rotation is applied), so it can be drawn directly on the rendered page image.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Bump when the tables change; `open_library` refuses a database made by another version.
SCHEMA_VERSION = 1


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class DocumentStatus(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"


class BlockKind(enum.StrEnum):
    TEXT = "text"
    HEADING = "heading"
    CAPTION = "caption"
    FIGURE = "figure"
    TABLE = "table"
    LIST = "list"


class Meta(Base):
    """Key/value facts about the library itself (schema version)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Document(Base):
    """One PDF, identified by the SHA-256 of its bytes."""

    __tablename__ = "documents"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_name: Mapped[str] = mapped_column(String(1024))
    title: Mapped[str | None] = mapped_column(String(1024))
    page_count: Mapped[int] = mapped_column(default=0)
    parser_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[DocumentStatus] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(default=0)
    created: Mapped[datetime] = mapped_column(default=_now)

    pages: Mapped[list[Page]] = relationship(
        back_populates="document", passive_deletes=True, order_by="Page.number"
    )
    blocks: Mapped[list[Block]] = relationship(
        back_populates="document", passive_deletes=True
    )
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", passive_deletes=True
    )


class Page(Base):
    """One page of a document (1-based number)."""

    __tablename__ = "pages"
    id: Mapped[int] = mapped_column(primary_key=True)
    doc_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    number: Mapped[int]
    width: Mapped[float]
    height: Mapped[float]
    rotation: Mapped[int] = mapped_column(default=0)
    text: Mapped[str] = mapped_column(Text, default="")
    has_text_layer: Mapped[bool] = mapped_column(default=True)
    ocr_used: Mapped[bool] = mapped_column(default=False)
    thumbnail: Mapped[str | None] = mapped_column(String(512))

    document: Mapped[Document] = relationship(back_populates="pages")
    __table_args__ = (Index("ix_pages_doc_number", "doc_id", "number", unique=True),)


class Block(Base):
    """A region of a page: paragraph, heading, caption, figure, table or list."""

    __tablename__ = "blocks"
    id: Mapped[int] = mapped_column(primary_key=True)
    doc_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    page: Mapped[int]
    kind: Mapped[BlockKind] = mapped_column(String(16))
    x0: Mapped[float]
    y0: Mapped[float]
    x1: Mapped[float]
    y1: Mapped[float]
    text: Mapped[str] = mapped_column(Text, default="")
    reading_order: Mapped[int]
    asset: Mapped[str | None] = mapped_column(String(512))
    caption_of: Mapped[int | None] = mapped_column(
        comment="For a caption: reading_order of the figure/table it describes."
    )

    document: Mapped[Document] = relationship(back_populates="blocks")
    __table_args__ = (Index("ix_blocks_doc_page", "doc_id", "page", "reading_order"),)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


class Chunk(Base):
    """The retrieval unit: text from consecutive blocks, with the page span and block ids."""

    __tablename__ = "chunks"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # "<doc_id[:16]>:<n>"
    doc_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))  # "text", "figure" or "table"
    page_start: Mapped[int]
    page_end: Mapped[int]
    block_ids: Mapped[list[int]] = mapped_column(JSON)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int]

    document: Mapped[Document] = relationship(back_populates="chunks")
    __table_args__ = (Index("ix_chunks_doc", "doc_id", "ordinal"),)
