"""Block vectors: each block's dense vector as the evidence sampler scores it (issue 24).

Written at ingest, or by the first question that needs them: an upgraded library starts with
none and fills them lazily (or with `folio ingest --reindex`).

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "block_vectors",
        sa.Column(
            "block_id", sa.Integer, sa.ForeignKey("blocks.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("encoder", sa.String(1024), primary_key=True),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("text_hash", sa.String(32), nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    op.execute(sa.text("UPDATE meta SET value = '4' WHERE key = 'schema_version'"))
