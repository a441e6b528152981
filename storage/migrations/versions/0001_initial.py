"""The schema before Alembic: documents, pages, blocks, chunks and the meta table.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("file_name", sa.String(1024), nullable=False),
        sa.Column("title", sa.String(1024)),
        sa.Column("page_count", sa.Integer, nullable=False),
        sa.Column("parser_version", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_table(
        "pages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("doc_id", sa.String(64), sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("width", sa.Double, nullable=False),
        sa.Column("height", sa.Double, nullable=False),
        sa.Column("rotation", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("has_text_layer", sa.Boolean, nullable=False),
        sa.Column("ocr_used", sa.Boolean, nullable=False),
        sa.Column("thumbnail", sa.String(512)),
    )
    op.create_index("ix_pages_doc_number", "pages", ["doc_id", "number"], unique=True)
    op.create_table(
        "blocks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("doc_id", sa.String(64), sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("page", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("x0", sa.Double, nullable=False),
        sa.Column("y0", sa.Double, nullable=False),
        sa.Column("x1", sa.Double, nullable=False),
        sa.Column("y1", sa.Double, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("reading_order", sa.Integer, nullable=False),
        sa.Column("asset", sa.String(512)),
        sa.Column(
            "caption_of", sa.Integer, comment="For a caption: reading_order of the figure/table it describes."
        ),
    )
    op.create_index("ix_blocks_doc_page", "blocks", ["doc_id", "page", "reading_order"])
    op.create_table(
        "chunks",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("doc_id", sa.String(64), sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("page_start", sa.Integer, nullable=False),
        sa.Column("page_end", sa.Integer, nullable=False),
        sa.Column("block_ids", sa.JSON, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
    )
    op.create_index("ix_chunks_doc", "chunks", ["doc_id", "ordinal"])
    op.execute(sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
