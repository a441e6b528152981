"""The Python API: `from app import Folio`.

Example:
    >>> from app import Folio
    >>> folio = Folio(library="my-library")
    >>> results = folio.ingest(["paper.pdf"])
    >>> [d.title for d in folio.documents()]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.settings import Settings
from pipeline.ingest import IngestResult, Progress, delete_document, find_pdfs, ingest
from pipeline.library import DocumentInfo, Library, list_documents, open_library
from pipeline.search import LibraryIndex, SearchHit

logger = logging.getLogger(__name__)


class Folio:
    """A Folio library: ingest PDFs, list and delete them (and, later, ask questions).

    Args:
        settings: a Settings object; when None, built from `config` and `overrides`.
        config: a preset name or JSON file (see `Settings.load`).
        on_status: told about slow one-off work (loading models, building the search index).
        **overrides: settings fields, e.g. `library="lib"`, `parse={"ocr": "never"}`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: str | Path | None = None,
        on_status: Callable[[str], None] | None = None,
        **overrides: Any,
    ):
        self.settings = settings or Settings.load(config, **overrides)
        self._library: Library | None = None
        self._index: LibraryIndex | None = None
        self._on_status = on_status or (lambda message: logger.info("%s", message))

    @property
    def library(self) -> Library:
        """The open library (opened, and created if needed, on first use)."""
        if self._library is None:
            self._library = open_library(self.settings.storage)
        return self._library

    @property
    def index(self) -> LibraryIndex:
        """The library's search index (models load on first use)."""
        if self._index is None:
            self._index = LibraryIndex(
                self.library, self.settings.retrieval, self.settings.encoders, on_status=self._on_status
            )
        return self._index

    def ingest(
        self,
        paths: Iterable[str | Path],
        *,
        recursive: bool = False,
        reindex: bool = False,
        password: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> list[IngestResult]:
        """Ingest PDFs (files or folders). Bad files are recorded as failed, never raised.

        Example:
            >>> [r.status for r in folio.ingest(["a.pdf", "a.pdf"])]
            ['added', 'unchanged']
        """
        files = find_pdfs([Path(p) for p in paths], recursive=recursive)
        s = self.settings
        return ingest(
            files,
            self.library,
            parse_config=s.parse,
            chunk_config=s.chunk,
            ingest_config=s.ingest,
            index=self.index,
            reindex=reindex,
            password=password,
            on_progress=on_progress,
        )

    def documents(self) -> list[DocumentInfo]:
        """Every document in the library (failed ones too, with their error), newest first."""
        return list_documents(self.library)

    def delete(self, doc_id: str) -> DocumentInfo:
        """Delete a document by id or unique id prefix.

        Raises:
            LookupError: no document, or several, match.
        """
        removed = delete_document(self.library, doc_id, self.index)
        return DocumentInfo(
            removed.id, removed.file_name, removed.title, removed.page_count, 0,
            str(removed.status), removed.error, removed.created,
        )

    def search(
        self, query: str, *, k: int = 10, mode: str | None = None, doc_ids: list[str] | None = None
    ) -> list[SearchHit]:
        """The best chunks for `query` (mode: bm25, splade, dense, hybrid, hybrid-prf).

        Example:
            >>> [(h.file_name, h.page) for h in folio.search("dense retrieval", k=3)]
        """
        return self.index.search(query, k=k, mode=mode, doc_ids=doc_ids)

    def close(self) -> None:
        if self._library is not None:
            self._library.close()
            self._library = None

    def __enter__(self) -> Folio:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
