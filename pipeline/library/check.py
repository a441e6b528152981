"""`folio check`: verify a library (database, documents, search index, asset folders); repair
what can be repaired.

What a crash may leave, and what the check makes of it:

- the database is only ever changed in whole transactions, so `PRAGMA integrity_check` and the
  foreign keys must hold, and every OK document must be whole (its pages, the blocks its chunks
  cite, its image files); a document that is not is an error (repair: it is marked failed, so
  the next `folio ingest` of its file redoes it);
- the saved index may be behind the database (the commits since the last save): that is
  expected, and opening the index replays them; its parts must always be of one save (a torn
  index is an error, rebuilt from the database when opened), and after opening every stored
  chunk must be in every part and nothing else;
- a killed ingest leaves `<doc>.partial` folders and, between moving a document's images into
  place and its commit, asset folders of no document: leftovers, removed by `repair` (and
  cleared by the next ingest that runs alone).
"""

from __future__ import annotations

import enum
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select, text, update

from models.config import EncoderConfig
from pipeline.ingestion.ingest import RETIRED_SUFFIX, leftover_assets, restore_retired_assets
from pipeline.library.search import LOCK_FILE, LibraryIndex, index_key
from retrieval import RetrievalConfig, inspect_saved
from storage import (
    Block,
    BlockVector,
    Chunk,
    Document,
    DocumentStatus,
    FileLock,
    Library,
    Page,
    document_version,
)

logger = logging.getLogger(__name__)

__all__ = ["CheckReport", "Finding", "Severity", "check_library"]

_PARTIAL = ".partial"


class Severity(enum.StrEnum):
    ERROR = "error"  # something is wrong
    LEFTOVER = "leftover"  # harmless remains of an interrupted run; `repair` removes them
    INFO = "info"  # worth knowing (e.g. what opening the index replayed)


@dataclass(frozen=True)
class Finding:
    """One thing the check found."""

    area: str  # "database", "documents", "index" or "assets"
    severity: Severity
    message: str
    repaired: bool = False

    def line(self) -> str:
        """One line for the command line."""
        done = " (repaired)" if self.repaired else ""
        return f"{self.severity}: {self.area}: {self.message}{done}"


@dataclass
class CheckReport:
    """What `check_library` found; `ok` unless an error is left unrepaired."""

    findings: list[Finding] = field(default_factory=list)
    documents: int = 0
    failed_documents: int = 0
    chunks: int = 0
    index_generation: str | None = None
    index_parts: tuple[str, ...] = ()
    replayed: tuple[int, int] = (0, 0)  # chunks (added, removed) when the index was opened

    @property
    def problems(self) -> list[Finding]:
        """Errors left unrepaired."""
        return [f for f in self.findings if f.severity == Severity.ERROR and not f.repaired]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: the library's size and the verdict."""
        state = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return (
            f"{state}: {self.documents} documents ({self.failed_documents} failed), "
            f"{self.chunks} chunks, index generation {self.index_generation} "
            f"({', '.join(self.index_parts)})"
        )

    def add(self, area: str, severity: Severity, message: str, repaired: bool = False) -> None:
        self.findings.append(Finding(area, severity, message, repaired))


def check_library(
    library: Library,
    retrieval: RetrievalConfig,
    encoders: EncoderConfig,
    *,
    repair: bool = False,
    index: LibraryIndex | None = None,
    on_status: Callable[[str], None] | None = None,
) -> CheckReport:
    """Verify a library: database integrity, whole documents, the search index, asset folders.

    Opening the index replays into it the chunks the database holds and it lacks, as every
    command that searches does; that is not a repair (the database is the source of truth).

    Args:
        library: the open library.
        retrieval: retrieval settings (which index parts the library keeps).
        encoders: encoder settings (the index's models).
        repair: also mark incomplete documents failed (to be ingested again), delete rows of
            no document, and remove leftover asset folders and index files.
        index: the library's open index (the web app's or API's); a new one when None.
        on_status: told about slow work (loading models, indexing chunks).

    Returns:
        The findings; `report.ok` is False while an error is left unrepaired.
    """
    report = CheckReport()
    _check_database(library, report, repair)
    ingest = library.ingest_lock()
    # NOTE: an ingest moves image folders and fills `.partial` folders; while one runs they
    # are in flux, so asset checks wait for a quiet library (and never remove its work).
    quiet = ingest.acquire(blocking=False)
    try:
        if quiet:
            _check_retired_assets(library, report, repair)
        _check_documents(library, report, repair, check_files=quiet)
        if quiet:
            _check_asset_folders(library, report, repair)
        else:
            report.add("assets", Severity.INFO, "an ingest is running: asset files and folders not checked")
    finally:
        if quiet:
            ingest.release()
    index = index or LibraryIndex(library, retrieval, encoders, on_status=on_status)
    _check_index(library, index, retrieval, encoders, report, repair)
    return report


# ------------------------------------------------------------------------------ database


def _check_database(library: Library, report: CheckReport, repair: bool) -> None:
    if library.engine.dialect.name != "sqlite":
        _check_rows_have_documents(library, report, repair)
        return
    with library.engine.connect() as conn:
        rows = [r[0] for r in conn.execute(text("PRAGMA integrity_check"))]
        if rows != ["ok"]:
            for row in rows[:20]:
                report.add("database", Severity.ERROR, f"integrity_check: {row}")
        violations = list(conn.execute(text("PRAGMA foreign_key_check")))
    for table, rowid, parent, _ in violations:
        fixed = False
        if repair and table in {"pages", "blocks", "chunks", "block_vectors"}:
            with library.engine.begin() as conn:
                conn.execute(text(f"DELETE FROM {table} WHERE rowid = :rowid"), {"rowid": rowid})
            fixed = True
        report.add("database", Severity.ERROR, f"{table} row {rowid} points to a missing {parent} row", fixed)


def _check_rows_have_documents(library: Library, report: CheckReport, repair: bool) -> None:
    """Other databases: what `PRAGMA foreign_key_check` finds on SQLite, by a join (the server
    enforces the foreign keys and keeps its own pages whole, so none is expected): rows of no
    document, block vectors of no block."""
    for table in (Page, Block, Chunk):
        orphan = ~select(Document.id).where(Document.id == table.doc_id).exists()
        with library.sessions() as session:
            ids = list(session.scalars(select(table.id).where(orphan)))
        if ids and repair:
            with library.sessions() as session, session.begin():
                session.execute(delete(table).where(orphan))
        for row_id in ids[:20]:
            report.add("database", Severity.ERROR, f"{table.__tablename__} row {row_id} points to a missing documents row", repair)
    orphan = ~select(Block.id).where(Block.id == BlockVector.block_id).exists()
    with library.sessions() as session:
        block_ids = list(session.scalars(select(BlockVector.block_id).where(orphan)))
    if block_ids and repair:
        with library.sessions() as session, session.begin():
            session.execute(delete(BlockVector).where(orphan))
    for block_id in block_ids[:20]:
        report.add("database", Severity.ERROR, f"block_vectors row of block {block_id} points to a missing blocks row", repair)


# ----------------------------------------------------------------------------- documents


def _check_documents(library: Library, report: CheckReport, repair: bool, *, check_files: bool) -> None:
    with library.sessions() as session:
        docs = list(session.execute(select(Document.id, Document.file_name, Document.page_count, Document.status, Document.error)))
        pages = dict(session.execute(select(Page.doc_id, func.count()).group_by(Page.doc_id)).all())
        chunks = dict(session.execute(select(Chunk.doc_id, func.count()).group_by(Chunk.doc_id)).all())
        blocks = dict(session.execute(select(Block.doc_id, func.count()).group_by(Block.doc_id)).all())
    report.documents = len(docs)
    report.failed_documents = sum(d.status != DocumentStatus.OK for d in docs)
    report.chunks = sum(chunks.values())
    broken: dict[str, str] = {}
    for doc in docs:
        name = f"{doc.id[:12]} {doc.file_name}"
        if doc.status == DocumentStatus.OK:
            if pages.get(doc.id, 0) != doc.page_count:
                broken[doc.id] = f"{name}: {pages.get(doc.id, 0)} of its {doc.page_count} pages stored"
            elif check_files:
                missing = _missing_files(library, doc.id)
                if missing:
                    broken[doc.id] = f"{name}: {len(missing)} image file(s) missing, e.g. {missing[0]}"
            if doc.id not in broken:
                bad = _chunks_citing_missing_blocks(library, doc.id)
                if bad:
                    broken[doc.id] = f"{name}: {bad} chunk(s) cite blocks that are not stored"
        elif doc.status == DocumentStatus.FAILED:
            if not (doc.error or "").strip():
                fixed = False
                if repair:
                    with library.sessions() as session, session.begin():
                        session.execute(
                            update(Document).where(Document.id == doc.id).values(error="failed (no reason was recorded)")
                        )
                    fixed = True
                report.add("documents", Severity.ERROR, f"{name}: failed without a reason", fixed)
            if pages.get(doc.id) or chunks.get(doc.id) or blocks.get(doc.id):
                broken[doc.id] = f"{name}: failed, yet has stored pages, blocks or chunks"
        else:
            broken[doc.id] = f"{name}: unknown status {doc.status!r}"
    for doc_id, message in broken.items():
        if repair:
            _mark_failed(library, doc_id, message)
        report.add("documents", Severity.ERROR, message, repair)


def _missing_files(library: Library, doc_id: str) -> list[str]:
    """Image files the document's pages and blocks name that are not on disk."""
    with library.sessions() as session:
        named = [a for a in session.scalars(select(Block.asset).where(Block.doc_id == doc_id)) if a]
        named += [t for t in session.scalars(select(Page.thumbnail).where(Page.doc_id == doc_id)) if t]
    return [rel for rel in named if not library.asset_path(rel).is_file()]


def _chunks_citing_missing_blocks(library: Library, doc_id: str) -> int:
    with library.sessions() as session:
        block_ids = set(session.scalars(select(Block.id).where(Block.doc_id == doc_id)))
        cited = list(session.scalars(select(Chunk.block_ids).where(Chunk.doc_id == doc_id)))
    return sum(not set(ids) <= block_ids for ids in cited)


def _mark_failed(library: Library, doc_id: str, message: str) -> None:
    """Drop an incomplete document's rows and record why, so the next ingest of it redoes it."""
    with library.sessions() as session, session.begin():
        for table in (Chunk, Block, Page):
            session.execute(delete(table).where(table.doc_id == doc_id))
        session.execute(
            update(Document)
            .where(Document.id == doc_id)
            .values(status=DocumentStatus.FAILED, page_count=0, error=f"stored incompletely ({message}); ingest the file again")
        )
    shutil.rmtree(library.assets_dir / doc_id, ignore_errors=True)


def _check_retired_assets(library: Library, report: CheckReport, repair: bool) -> None:
    """Image folders a store killed before its commit left aside (call with the ingest lock
    held); repaired by putting them back, before the documents' files are checked."""
    for doc_id in restore_retired_assets(library, repair=repair):
        report.add(
            "assets", Severity.ERROR,
            f"assets/{doc_id}{RETIRED_SUFFIX}: the images of {doc_id[:12]}, set aside by a store "
            "killed before its commit (its rows are the old ones); --repair puts them back, "
            "in place of the uncommitted new ones if any",
            repair,
        )  # fmt: skip


def _check_asset_folders(library: Library, report: CheckReport, repair: bool) -> None:
    """`<doc>.partial` folders and folders of no OK document (call with the ingest lock held)."""
    for path in leftover_assets(library):
        if path.name.endswith(_PARTIAL):
            why = "images of a document whose parsing or storing was interrupted"
        elif path.name.endswith(RETIRED_SUFFIX):
            why = "old images of a document stored again (its new images are in place)"
        else:
            why = "images of no stored document (interrupted before its commit, or failed since)"
        if repair:
            shutil.rmtree(path, ignore_errors=True)
        report.add("assets", Severity.LEFTOVER, f"assets/{path.name}: {why}", repair)


# --------------------------------------------------------------------------------- index


def _check_index(
    library: Library,
    index: LibraryIndex,
    retrieval: RetrievalConfig,
    encoders: EncoderConfig,
    report: CheckReport,
    repair: bool,
) -> None:
    with library.sessions() as session:
        stored = set(session.scalars(select(Chunk.id)))
    torn = _check_saved_index(library, retrieval, encoders, stored, report, repair)
    added, removed = index.sync()
    report.replayed = (added, removed)
    if added or removed:
        report.add(
            "index", Severity.INFO,
            f"opening the index replayed the database: {added} chunk(s) added, {removed} removed",
        )  # fmt: skip
    for finding in torn:
        report.findings.append(Finding(finding.area, finding.severity, finding.message, repaired=True))
    # NOTE: an ingest may commit meanwhile; a difference that a second replay removes was that.
    for attempt in range(2):
        with library.sessions() as session:
            stored = set(session.scalars(select(Chunk.id)))
        parts = index.part_chunk_ids()
        wrong = {name: ids for name, ids in parts.items() if ids != stored}
        if not wrong or attempt:
            break
        index.sync()
    report.index_parts = tuple(sorted(parts))
    report.index_generation = index.generation
    for name, ids in wrong.items():
        report.add(
            "index", Severity.ERROR,
            f"after opening, the {name} index lacks {len(stored - ids)} stored chunk(s) and holds "
            f"{len(ids - stored)} unknown one(s)",
        )  # fmt: skip
    if not wrong:
        stale = {d for d, v in _document_versions(library).items() if index.document_versions().get(d) != v}
        if stale:
            report.add("index", Severity.ERROR, f"after opening, the index holds older texts of {len(stale)} document(s)")
        saved = inspect_saved(library.index_dir)
        if saved.problems or saved.generation != index.generation:
            report.add("index", Severity.ERROR, f"after opening, the saved index is not the open one: {saved.problems}")


def _check_saved_index(
    library: Library,
    retrieval: RetrievalConfig,
    encoders: EncoderConfig,
    stored: set[str],
    report: CheckReport,
    repair: bool,
) -> list[Finding]:
    """Check the index files as they are on disk; returns the errors opening will repair."""
    directory = library.index_dir
    key_path = directory / "index-key.json"
    if not (directory / "retriever.json").is_file():
        if stored:
            report.add("index", Severity.INFO, "no saved index: it is built from the stored chunks when opened")
        return []
    lock = FileLock(directory / LOCK_FILE)
    lock.acquire(shared=True)
    try:
        saved = inspect_saved(directory)
        if repair:
            for path in saved.stray:
                path.unlink(missing_ok=True)
    finally:
        lock.release()
    for path in saved.stray:
        report.add(
            "index", Severity.LEFTOVER, f"index/{path.name}: a file of no current save (an interrupted or earlier save)", repair
        )
    torn = [Finding("index", Severity.ERROR, f"torn index: {p}; rebuilt from the database when opened") for p in saved.problems]
    if torn:
        return torn
    if key_path.is_file() and index_key(retrieval, encoders) not in key_path.read_text():
        report.add("index", Severity.INFO, "the index was built with other settings: rebuilt when opened")
        return []
    behind, ahead = len(stored - saved.chunk_ids), len(saved.chunk_ids - stored)
    held = saved.meta.get("doc_versions", {})
    current = _document_versions(library)
    changed = sum(1 for did, v in held.items() if did in current and current[did] != v)
    if behind or ahead or changed:
        report.add(
            "index", Severity.INFO,
            f"the saved index (generation {saved.generation}) is behind the database by {behind} "
            f"new and {ahead} deleted chunk(s), and {changed} document(s) stored again: replayed "
            "when opened",
        )  # fmt: skip
    return []


def _document_versions(library: Library) -> dict[str, str]:
    """doc_id -> version, for the documents that have chunks (what the index should hold)."""
    with library.sessions() as session:
        rows = session.execute(
            select(Document.id, Document.created).where(Document.id.in_(select(Chunk.doc_id).distinct()))
        )
        return {did: document_version(created) for did, created in rows}
