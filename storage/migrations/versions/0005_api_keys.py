"""API keys: users.api_key_hash (SHA-256 of the key `folio user key` issued; NULL: none).

`folio serve --api` finds the asking user by it (issue 25).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("api_key_hash", sa.String(64)))
    op.create_index("ix_users_api_key_hash", "users", ["api_key_hash"], unique=True)
    op.execute(sa.text("UPDATE meta SET value = '5' WHERE key = 'schema_version'"))
