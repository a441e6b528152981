"""Accounts: users.password_hash (a scrypt hash; NULL: a user who cannot sign in).

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("password_hash", sa.String(256)))
    op.execute(sa.text("UPDATE meta SET value = '3' WHERE key = 'schema_version'"))
