"""Owners: a users table and documents.owner_id (NULL: the single local user).

What "a user never sees another user's documents" will filter on; no query uses it yet.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":
        # NOTE: Alembic adds the foreign key as a separate ALTER, which SQLite lacks, and its
        # batch mode copies the table: dropping the old documents table with foreign keys on
        # would cascade-delete every page, block and chunk. SQLite accepts the REFERENCES
        # inline in ADD COLUMN for a column that defaults to NULL.
        op.execute(
            "ALTER TABLE documents ADD COLUMN owner_id INTEGER "
            "CONSTRAINT fk_documents_owner_id_users REFERENCES users (id)"
        )
    else:
        op.add_column(
            "documents",
            sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id", name="fk_documents_owner_id_users")),
        )
    op.create_index("ix_documents_owner_id", "documents", ["owner_id"])
    op.execute(sa.text("UPDATE meta SET value = '2' WHERE key = 'schema_version'"))
