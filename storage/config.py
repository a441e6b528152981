"""Storage settings: where the library lives and which database holds it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class StorageConfig(BaseModel):
    """Where a library keeps its database, page images and indexes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    library: Path = Field(
        default=Path("folio-library"),
        description="Library folder: folio.db, page and figure images, indexes, model caches.",
    )
    database_url: str | None = Field(
        default=None,
        description="Any SQLAlchemy URL (e.g. postgresql+psycopg://...). Default: SQLite "
        "file folio.db inside the library folder, in WAL mode.",
    )

    def resolved_database_url(self) -> str:
        """The database URL in force: the setting, or SQLite inside the library folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.library / 'folio.db').resolve()}"
