"""Alembic migrations of the library database, one revision per schema version ("0001" is 1).

`storage.migrate` runs them (no alembic.ini): `open_library` upgrades an older database itself.
Forward only: a revision has no `downgrade` (going back means restoring a backup), because on
SQLite undoing a column means copying its table, which the foreign keys' cascades make unsafe.

A new revision: change `storage/models.py`, bump `SCHEMA_VERSION`, then write
`versions/NNNN_<what>.py` by hand or from `alembic.command.revision(storage.migrate.alembic_config(),
"what", rev_id="NNNN")`. Each revision ends by writing its number into `meta`'s schema_version:
that is how a Folio that predates Alembic refuses a newer database.
"""
