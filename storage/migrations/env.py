"""Alembic environment: runs on the connection `storage.migrate` passes in `config.attributes`.

The caller holds the transaction (and the lock that keeps a second process from migrating at the
same time), so this only configures the context and runs the revisions inside it.
"""

from alembic import context

from storage.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=False)
with context.begin_transaction():
    context.run_migrations()
