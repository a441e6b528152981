"""SQLAlchemy 2.0 models of a library: documents, pages, blocks and the chunks retrieval sees.

Every bbox is in PDF points in the page's *displayed* coordinate space (after the page's
rotation is applied), so it can be drawn directly on the rendered page image.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    ColumnElement,
    Dialect,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The number of the newest migration in storage/migrations/versions (revision "0005" is 5).
# A change to the tables needs a new revision there and this bumped; `open_library` upgrades
# older databases to it and refuses newer ones.
SCHEMA_VERSION = 5


def _now() -> datetime:
    return datetime.now(UTC)


class DocumentText(TypeDecorator[str]):
    """Text that comes from a document (file name, title, page and block text).

    NUL characters become U+FFFD because PostgreSQL cannot store them (SQLite can; a broken PDF
    may yield them), and a bounded column keeps its first `length` characters because
    PostgreSQL refuses longer values where SQLite keeps them (a PDF title may be any length).
    """

    impl = Text
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length

    def load_dialect_impl(self, dialect: Dialect):  # noqa: ANN201 - a TypeEngine
        # NOTE: not through dialect.type_descriptor, which turns Text into VARCHAR on psycopg.
        return String(self.length) if self.length else Text()

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        value = value.replace("\x00", "\ufffd")
        return value[: self.length] if self.length else value


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


class User(Base):
    """Someone who owns documents in a library shared by several people (pipeline/library/owners.py).

    Documents without an owner belong to the local user. A user without a password owns
    documents but cannot sign in to the web app.
    """

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created: Mapped[datetime] = mapped_column(default=_now)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    # SHA-256 of the user's API key (`folio user key`); NULL: none. Keys are random (256 bits),
    # so a fast hash is enough and lets a request find its user by one indexed lookup.
    api_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)


def document_version(created) -> str:  # noqa: ANN001 - a datetime (or what a driver returns for one)
    """A document's version: when its rows were written (storing it again writes them anew).
    Compare versions read back from the database, never a value before it was written (drivers
    may change its time zone or precision)."""
    return created.isoformat() if hasattr(created, "isoformat") else str(created)


class Document(Base):
    """One PDF, identified by the SHA-256 of its bytes."""

    __tablename__ = "documents"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_name: Mapped[str] = mapped_column(DocumentText(1024))
    title: Mapped[str | None] = mapped_column(DocumentText(1024))
    page_count: Mapped[int] = mapped_column(default=0)
    parser_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[DocumentStatus] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(DocumentText())
    size_bytes: Mapped[int] = mapped_column(default=0)
    created: Mapped[datetime] = mapped_column(default=_now)
    # NOTE: NULL is the single local user. Deleting a user with documents is refused (no
    # cascade): their documents' image folders and index entries must go through delete first.
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", name="fk_documents_owner_id_users"))

    @classmethod
    def id_prefix(cls, prefix: str) -> ColumnElement[bool]:
        """Documents whose id starts with `prefix`, alike on every database (SQLite's LIKE
        ignores case, PostgreSQL's does not; `%` and `_` in the prefix are plain characters)."""
        return cls.id.startswith(prefix.strip().lower(), autoescape=True)

    pages: Mapped[list[Page]] = relationship(
        back_populates="document", passive_deletes=True, order_by="Page.number"
    )
    blocks: Mapped[list[Block]] = relationship(
        back_populates="document", passive_deletes=True
    )
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", passive_deletes=True
    )
    __table_args__ = (Index("ix_documents_owner_id", "owner_id"),)


class Page(Base):
    """One page of a document (1-based number)."""

    __tablename__ = "pages"
    id: Mapped[int] = mapped_column(primary_key=True)
    doc_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    number: Mapped[int]
    width: Mapped[float]
    height: Mapped[float]
    rotation: Mapped[int] = mapped_column(default=0)
    text: Mapped[str] = mapped_column(DocumentText(), default="")
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
    text: Mapped[str] = mapped_column(DocumentText(), default="")
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
    text: Mapped[str] = mapped_column(DocumentText())
    token_count: Mapped[int]

    document: Mapped[Document] = relationship(back_populates="chunks")
    __table_args__ = (Index("ix_chunks_doc", "doc_id", "ordinal"),)


class BlockVector(Base):
    """A block's dense vector as the evidence sampler scores it, written at ingest (or by the
    first question that needed it), so questions read it instead of embedding the block.

    Keyed by block and encoder (its name, e.g. "all-MiniLM-L6-v2@256"): a vector of another
    encoder, dimension or text (`text_hash` of what was embedded) is never used. Rows go with
    their block (ON DELETE CASCADE), so with their document.
    """

    __tablename__ = "block_vectors"
    block_id: Mapped[int] = mapped_column(
        ForeignKey("blocks.id", ondelete="CASCADE"), primary_key=True
    )
    encoder: Mapped[str] = mapped_column(String(1024), primary_key=True)
    dim: Mapped[int]
    text_hash: Mapped[str] = mapped_column(String(32))
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, `dim` values
