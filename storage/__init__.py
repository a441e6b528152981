"""Storage: SQLAlchemy models and sessions, page-image assets, index folders."""

from storage.config import StorageConfig
from storage.db import SOURCE_PDF, FileLock, Library, open_library
from storage.migrate import SchemaMismatchError
from storage.models import (
    SCHEMA_VERSION,
    Block,
    BlockKind,
    BlockVector,
    Chunk,
    Document,
    DocumentStatus,
    Page,
    User,
    document_version,
)

__all__ = [
    "SCHEMA_VERSION",
    "SOURCE_PDF",
    "Block",
    "BlockKind",
    "BlockVector",
    "Chunk",
    "Document",
    "DocumentStatus",
    "FileLock",
    "Library",
    "Page",
    "SchemaMismatchError",
    "StorageConfig",
    "User",
    "document_version",
    "open_library",
]
