"""Ingestion: hash, parse (in worker processes), store in one transaction, index.

Idempotent: a document is identified by the SHA-256 of its bytes, so the same bytes ingest once.
Crash-safe: a document's rows are written in one transaction and its images are moved into place
just before it, so a crash or Ctrl-C leaves either the whole document or none of it, and running
the same command again finishes the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from pipeline.config import ChunkConfig, IngestConfig, ParseConfig
from pipeline.ingestion.chunk import BlockRef, ChunkDraft, chunk_blocks
from pipeline.ingestion.isolation import TaskOutcome, TaskStatus, WorkerPool, emit
from pipeline.ingestion.parse import ParsedDocument, ParseError, parse_pdf, sha256_file
from pipeline.library.block_vectors import (
    EncodedBlocks,
    EncoderIdentity,
    encode_blocks,
    encoder_identity,
    vector_rows,
)
from pipeline.library.owners import owned_doc_id, owner_clause, owner_id
from storage import (
    SOURCE_PDF,
    Block,
    BlockVector,
    Chunk,
    Document,
    DocumentStatus,
    Library,
    Page,
    document_version,
)

logger = logging.getLogger(__name__)


class ChunkIndex(Protocol):
    """What ingestion needs of the retrieval indexes: keep them in step with stored chunks."""

    def add(self, chunks: Sequence[tuple[str, str]]) -> None:
        """Add (chunk_id, text) items."""

    def remove(self, chunk_ids: Sequence[str]) -> None:
        """Remove items by chunk id (unknown ids are ignored)."""

    def flush(self) -> None:
        """Persist what changed."""


# (todo: [(position, path, doc_id)], library, parse, ingest, password, notify) ->
# (position, path, ParsedDocument | one-line error) for each document, in any order.
ParseAll = Callable[
    [list[tuple[int, Path, str]], Library, ParseConfig, IngestConfig, str | None, Callable],
    Generator[tuple[int, Path, ParsedDocument | str], None, None],
]


@dataclass(frozen=True)
class IngestResult:
    path: Path
    doc_id: str | None
    status: str  # "added", "unchanged", "failed"
    pages: int = 0
    chunks: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    """A progress event: a document finished, or a page of a document was parsed.

    After a document's last "page" event it is stored and indexed; its "document" event follows.
    """

    kind: str  # "page" or "document"
    path: Path
    pages_done: int = 0
    page_count: int = 0
    result: IngestResult | None = None
    ocr_pages: int = 0  # pages OCR'd so far (page events)


def find_pdfs(paths: Iterable[Path], *, recursive: bool = False) -> list[Path]:
    """Expand folders into the PDFs they hold (sorted); files are kept as given.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found += sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() == ".pdf")
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def ingest(
    paths: Sequence[Path],
    library: Library,
    *,
    parse_config: ParseConfig,
    chunk_config: ChunkConfig,
    ingest_config: IngestConfig,
    index: ChunkIndex | None = None,
    reindex: bool = False,
    password: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    owner: str | None = None,
    parse_all: ParseAll | None = None,
) -> list[IngestResult]:
    """Ingest PDFs into the library; one result per path, in order. Never raises for bad input.

    Args:
        paths: PDF files (use `find_pdfs` to expand folders).
        library: the open library.
        index: retrieval indexes to keep in step (chunks added and removed with documents).
        reindex: parse and store again even when the same bytes are already in the library.
        password: password for encrypted PDFs.
        on_progress: called in this process for every parsed page and finished document.
        owner: the user whose library the documents join (None: the local user); the same
            bytes make a separate document per owner (`pipeline.library.owners.owned_doc_id`).
        parse_all: what parses the documents to store (default: local worker processes;
            `pipeline.ingestion.distributed` passes Ray workers). This process stores every one of them.
    """
    notify = on_progress or (lambda _event: None)
    owner_key = owner_id(library, owner, create=True)
    results: dict[int, IngestResult] = {}
    todo: list[tuple[int, Path, str]] = []
    parser_version = _parser_version(parse_config)
    for i, path in enumerate(paths):
        try:
            doc_id = owned_doc_id(sha256_file(path), owner)
        except OSError as exc:
            results[i] = IngestResult(path, None, "failed", error=f"{path.name}: cannot read ({exc.strerror})")
            notify(Progress("document", path, result=results[i]))
            continue
        existing = _existing(library, doc_id)
        if existing is not None and not reindex and existing.status == DocumentStatus.OK and existing.parser_version == parser_version:
            results[i] = IngestResult(path, doc_id, "unchanged", existing.page_count)
            notify(Progress("document", path, result=results[i]))
            continue
        todo.append((i, path, doc_id))

    # NOTE: shared with other ingests; `folio check --repair` takes it alone before it removes
    # the asset folders of unfinished documents, so it never removes this run's work. Alone
    # here, this run clears what killed runs left (documents it skips would keep them).
    busy = library.ingest_lock()
    if busy.acquire(blocking=False):
        restore_retired_assets(library)
        for leftover in leftover_assets(library):
            shutil.rmtree(leftover, ignore_errors=True)
        busy.release()
    busy.acquire(shared=True)
    try:
        block_encoder = _block_encoder(index, ingest_config) if todo else None
        parsed = (parse_all or _parse_all)(todo, library, parse_config, ingest_config, password, notify)
        # NOTE: closed on the way out (Ctrl-C, an error storing), so its workers stop now.
        with contextlib.closing(parsed):
            for i, path, outcome in parsed:
                if isinstance(outcome, ParsedDocument):
                    results[i] = store_parsed(
                        outcome, path, library, chunk_config, ingest_config, index, owner_key,
                        block_encoder=block_encoder,
                    )  # fmt: skip
                else:
                    doc_id = next(d for j, _, d in todo if j == i)
                    results[i] = _record_failure(
                        library, doc_id, path, outcome, parser_version, owner_key
                    )
                    logger.info("%s", outcome)
                notify(Progress("document", path, result=results[i]))
    finally:
        busy.release()
        # NOTE: saved once per run, not per document; a crash before this is repaired when the
        # index is next opened (LibraryIndex reconciles it with the stored chunks).
        if index is not None:
            index.flush()
    return [results[i] for i in range(len(paths))]


def _block_encoder(index: ChunkIndex | None, config: IngestConfig) -> object | None:
    """The encoder whose block vectors ingestion stores: the index's dense encoder (the
    sampler's at question time), when the setting is on and the index has one."""
    if not config.store_block_vectors or index is None:
        return None
    return getattr(index, "dense_encoder", None)  # a ChunkIndex may keep no dense part


def _parser_version(config: ParseConfig) -> str:
    from pipeline.ingestion.parse import parser_version  # NOTE: PyMuPDF only when ingesting

    return parser_version(config)


def _existing(library: Library, doc_id: str) -> Document | None:
    with library.sessions() as session:
        return session.get(Document, doc_id)


# ------------------------------------------------------------------------------------ parsing


def init_parse_worker() -> None:
    """NOTE: must be top-level for pickling (it runs in each worker process when it starts)."""
    logging.basicConfig(level=logging.WARNING)


def parse_in_worker(
    path: str, doc_id: str, config: ParseConfig, asset_dir: str, prefix: str, password: str | None
) -> ParsedDocument | str:
    """Parse one PDF in a worker process. NOTE: must be top-level for pickling.

    Raises:
        MemoryError: out of the worker's memory limit (the pool reports it, and recycles the worker).
    """
    source = Path(path)

    def on_page(done: int, total: int, ocr_pages: int) -> None:
        emit((path, done, total, ocr_pages))

    try:
        return parse_pdf(
            source,
            config,
            asset_dir=Path(asset_dir),
            asset_prefix=prefix,
            password=password,
            doc_id=doc_id,
            on_page=on_page,
        )
    except ParseError as exc:
        return str(exc)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad PDF must never stop a batch
        if _is_allocation_failure(exc):
            # NOTE: C++ libraries (onnxruntime under figure OCR) fail with std::bad_alloc at the
            # worker's address-space limit: that is running out of memory, and the worker is spent.
            raise MemoryError(str(exc)) from exc
        return f"{source.name}: unexpected parser error ({_last_line(f'{type(exc).__name__}: {exc}')})"


def _is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "bad_alloc" in text or "Failed to allocate memory" in text


def _last_line(text: str) -> str:
    """The line that says what went wrong: a wrapped traceback (RapidOCR re-raises onnxruntime's
    errors with the whole traceback as the message) ends with it, other messages start with it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback (most recent call last)" in lines[0]:
        return f"{lines[0].split(':')[0]}: {lines[-1]}"
    return lines[0] if lines else text


def _parse_all(todo, library, parse_config, ingest_config, password, notify):
    """Yield (index, path, ParsedDocument | error message) as workers finish.

    Each document is parsed in a worker process under a deadline and a memory limit; a document
    that crashes, hangs or exhausts its worker fails alone (the worker is replaced).
    """
    if not todo:
        return

    def relay(event: tuple[str, int, int, int]) -> None:
        path, done, total, ocr_pages = event
        notify(Progress("page", Path(path), done, total, ocr_pages=ocr_pages))

    tasks = []
    for i, path, doc_id in todo:
        partial = library.assets_dir / f"{doc_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        tasks.append((i, (str(path), doc_id, parse_config, str(partial), f"assets/{doc_id}", password)))
    paths = {i: path for i, path, _ in todo}
    with WorkerPool(
        parse_in_worker,
        workers=max(1, min(ingest_config.workers, len(todo), os.cpu_count() or 1)),
        timeout_s=ingest_config.parse_timeout_s,
        memory_mb=ingest_config.parse_memory_mb,
        on_event=relay,
        initializer=init_parse_worker,
    ) as pool:
        for outcome in pool.run(tasks):
            path = paths[outcome.key]
            if outcome.status == TaskStatus.OK:
                yield outcome.key, path, outcome.value
            else:
                yield outcome.key, path, parse_failure(path.name, outcome, ingest_config)


def parse_failure(name: str, outcome: TaskOutcome, config: IngestConfig) -> str:
    """The one-line reason for a parse that did not return: what happened and the fix."""
    if outcome.status == TaskStatus.TIMEOUT:
        return (
            f"{name}: parsing took longer than {config.parse_timeout_s:g} s; "
            "raise FOLIO_INGEST__PARSE_TIMEOUT_S or split the file"
        )
    if outcome.status == TaskStatus.MEMORY:
        return (
            f"{name}: parsing ran out of memory (limit {config.parse_memory_mb} MB); "
            "raise FOLIO_INGEST__PARSE_MEMORY_MB or split the file"
        )
    if outcome.status == TaskStatus.CRASH:
        return f"{name}: the parser crashed ({outcome.detail}); the file is probably damaged, try re-saving it"
    return f"{name}: unexpected parser error ({outcome.detail})"


# ------------------------------------------------------------------------------------ storing


def store_parsed(
    parsed: ParsedDocument,
    path: Path,
    library: Library,
    chunk_config: ChunkConfig,
    ingest_config: IngestConfig,
    index: ChunkIndex | None,
    owner_key: int | None = None,
    *,
    block_encoder: object | None = None,
) -> IngestResult:
    """Write one parsed document in one transaction, then bring the indexes in step.

    Args:
        block_encoder: When given (a `MiniLMEncoder`, the sampler's encoder), the vector the
            evidence sampler scores for each block is stored with the document.
    """
    doc_id = parsed.doc_id
    logger.info("storing %s (%d pages)", path.name, parsed.page_count)
    # NOTE: encoded before the transaction, so the database is not held while the model runs.
    vectors = encode_document_blocks(parsed, block_encoder)
    partial = library.assets_dir / f"{doc_id}.partial"
    if ingest_config.keep_source:
        partial.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, partial / SOURCE_PDF)
    # NOTE: two processes storing the same new document at once both find no row and insert;
    # the later commit fails on the primary key. Its second attempt finds the row and replaces it
    # (same bytes, same parse), as a re-ingest would.
    try:
        old_chunk_ids, chunk_rows = _write_document(
            parsed, path, library, chunk_config, owner_key, vectors
        )
    except IntegrityError:
        logger.info("%s was stored by another process meanwhile; storing it again", path.name)
        old_chunk_ids, chunk_rows = _write_document(
            parsed, path, library, chunk_config, owner_key, vectors
        )
    if index is not None:
        if old_chunk_ids:
            index.remove(old_chunk_ids)
        index.add([(row["id"], row["text"]) for row in chunk_rows])
    return IngestResult(path, doc_id, "added", parsed.page_count, len(chunk_rows))


def _write_document(
    parsed: ParsedDocument,
    path: Path,
    library: Library,
    chunk_config: ChunkConfig,
    owner_key: int | None,
    vectors: tuple[EncoderIdentity, EncodedBlocks] | None = None,
) -> tuple[list[str], list[dict]]:
    """One transaction: replace the document's rows, move its images into place.

    Returns:
        The chunk ids it replaced and the chunk rows it wrote.
    """
    doc_id = parsed.doc_id
    partial = library.assets_dir / f"{doc_id}.partial"
    final = library.assets_dir / doc_id
    retired = library.assets_dir / f"{doc_id}{RETIRED_SUFFIX}"
    old_chunk_ids: list[str] = []
    set_aside = False
    try:
        with library.sessions() as session, session.begin():
            if session.get(Document, doc_id) is not None:
                old_chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.doc_id == doc_id)))
                # NOTE: rows of pages, blocks and chunks go with it through ON DELETE CASCADE.
                session.execute(delete(Document).where(Document.id == doc_id))
                session.expunge_all()
            session.add(
                Document(
                    id=doc_id,
                    file_name=parsed.file_name,
                    title=parsed.title,
                    page_count=parsed.page_count,
                    parser_version=parsed.parser_version,
                    status=DocumentStatus.OK,
                    error=None,
                    size_bytes=path.stat().st_size,
                    owner_id=owner_key,
                )
            )
            session.flush()
            session.execute(insert(Page), [_page_row(doc_id, p) for p in parsed.pages])
            block_rows = [_block_row(doc_id, p.number, b) for p in parsed.pages for b in p.blocks]
            block_ids = (
                list(session.scalars(insert(Block).returning(Block.id, sort_by_parameter_order=True), block_rows))
                if block_rows
                else []
            )
            if vectors is not None:
                identity, by_position = vectors
                by_id = {block_ids[pos]: encoded for pos, encoded in by_position.items()}
                if by_id:
                    session.execute(insert(BlockVector), vector_rows(by_id, identity))
            drafts = chunk_blocks(_block_refs(block_ids, block_rows), chunk_config)
            chunk_rows = [_chunk_row(doc_id, d) for d in drafts]
            if chunk_rows:
                session.execute(insert(Chunk), chunk_rows)
            # Images go into place before the commit: a crash in between leaves spare files
            # (overwritten on the next run), never rows pointing at missing files. The old
            # images are renamed aside, not deleted, until the commit: a kill between the two
            # renames leaves them whole (`restore_retired_assets` puts them back).
            if partial.exists():
                # The new folder names the rows it belongs to: if a kill lands after the renames
                # and before the commit, the version the database kept tells that it does not.
                created = session.scalar(select(Document.created).where(Document.id == doc_id))
                (partial / STORE_STAMP).write_text(document_version(created))
                shutil.rmtree(retired, ignore_errors=True)
                if final.exists():
                    final.rename(retired)
                    set_aside = True
                partial.rename(final)
    except BaseException:
        if set_aside:  # the rows were rolled back: so are the images
            shutil.rmtree(final, ignore_errors=True)
            retired.rename(final)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return old_chunk_ids, chunk_rows


def encode_document_blocks(
    parsed: ParsedDocument, encoder: object | None
) -> tuple[EncoderIdentity, EncodedBlocks] | None:
    """The block vectors storing `parsed` writes: (the encoder's identity, (text, vector) by
    block position); None without an encoder that has an identity."""
    identity = encoder_identity(encoder) if encoder is not None else None
    if identity is None:
        return None
    block_rows = [_block_row(parsed.doc_id, p.number, b) for p in parsed.pages for b in p.blocks]
    return identity, encode_blocks(block_rows, encoder)


def chunk_texts(parsed: ParsedDocument, config: ChunkConfig) -> list[tuple[str, str]]:
    """The (chunk_id, text) pairs storing `parsed` will index, computed without the database
    (chunk ids and texts do not depend on the block ids the database assigns)."""
    block_rows = [_block_row(parsed.doc_id, p.number, b) for p in parsed.pages for b in p.blocks]
    drafts = chunk_blocks(_block_refs(range(len(block_rows)), block_rows), config)
    return [(row["id"], row["text"]) for row in (_chunk_row(parsed.doc_id, d) for d in drafts)]


def _block_refs(block_ids: Iterable[int], block_rows: list[dict]) -> list[BlockRef]:
    return [
        BlockRef(bid, row["page"], row["kind"], row["text"], row["caption_of"], row["reading_order"])
        for bid, row in zip(block_ids, block_rows, strict=True)
    ]


def _page_row(doc_id: str, page) -> dict:
    return {
        "doc_id": doc_id,
        "number": page.number,
        "width": page.width,
        "height": page.height,
        "rotation": page.rotation,
        "text": page.text,
        "has_text_layer": page.has_text_layer,
        "ocr_used": page.ocr_used,
        "thumbnail": page.thumbnail,
    }


def _block_row(doc_id: str, page_number: int, block) -> dict:
    x0, y0, x1, y1 = block.bbox
    return {
        "doc_id": doc_id,
        "page": page_number,
        "kind": block.kind,
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "text": block.text,
        "reading_order": block.reading_order,
        "asset": block.asset,
        "caption_of": block.caption_of,
    }


def _chunk_row(doc_id: str, draft: ChunkDraft) -> dict:
    return {
        "id": f"{doc_id[:16]}:{draft.ordinal}",
        "doc_id": doc_id,
        "ordinal": draft.ordinal,
        "kind": draft.kind,
        "page_start": draft.page_start,
        "page_end": draft.page_end,
        "block_ids": list(draft.block_ids),
        "text": draft.text,
        "token_count": draft.token_count,
    }


def _record_failure(
    library: Library, doc_id: str, path: Path, error: str, parser_version: str, owner_key: int | None = None
) -> IngestResult:
    """Record a failed document (replacing an earlier attempt) so `folio docs` shows why."""
    shutil.rmtree(library.assets_dir / f"{doc_id}.partial", ignore_errors=True)
    with library.sessions() as session, session.begin():
        old = session.get(Document, doc_id)
        if old is not None and old.status == DocumentStatus.OK:
            # A good earlier version stays; only this attempt failed (e.g. --reindex with a bug).
            return IngestResult(path, doc_id, "failed", error=error)
        session.execute(delete(Document).where(Document.id == doc_id))
        session.add(
            Document(
                id=doc_id,
                file_name=path.name,
                title=None,
                page_count=0,
                parser_version=parser_version,
                status=DocumentStatus.FAILED,
                error=error,
                size_bytes=path.stat().st_size if path.exists() else 0,
                owner_id=owner_key,
            )
        )
    return IngestResult(path, doc_id, "failed", error=error)


# A document's old image folder while its new one moves into place (see `_write_document`).
RETIRED_SUFFIX = ".old"
# In each image folder a store moves into place: the version of the rows it was written with.
STORE_STAMP = ".stored-version"


def restore_retired_assets(library: Library, *, repair: bool = True) -> list[str]:
    """Put back the image folders a store killed before its commit left aside, `<doc>.old` of
    an OK document whose rows were never replaced: killed between its two renames (no `<doc>`
    folder), or after both (the `<doc>` folder in place is stamped with a version the database
    never committed; it goes). Meaningful only while no ingest runs (hold
    `library.ingest_lock()` alone).

    Returns:
        The ids of those documents (restored when `repair`).
    """
    if not library.assets_dir.is_dir():
        return []
    with library.sessions() as session:
        versions = {
            did: document_version(created)
            for did, created in session.execute(
                select(Document.id, Document.created).where(Document.status == DocumentStatus.OK)
            )
        }
    found = []
    for path in sorted(library.assets_dir.glob(f"*{RETIRED_SUFFIX}")):
        doc_id = path.name[: -len(RETIRED_SUFFIX)]
        final = library.assets_dir / doc_id
        if not path.is_dir() or doc_id not in versions:
            continue
        uncommitted = final.is_dir() and _stamp(final) not in (None, versions[doc_id])
        if final.exists() and not uncommitted:
            continue  # committed: `<doc>.old` is a leftover
        found.append(doc_id)
        if repair:
            if uncommitted:
                shutil.rmtree(final)
            path.rename(final)
    return found


def _stamp(folder: Path) -> str | None:
    """The version an image folder was stored with (None: written before stamps existed)."""
    try:
        return (folder / STORE_STAMP).read_text()
    except FileNotFoundError:
        return None


def leftover_assets(library: Library) -> list[Path]:
    """Asset folders of no stored document: `<doc>.partial` folders of an interrupted parse or
    store, `<doc>.old` folders a store left aside, and folders of no OK document (moved into
    place by a store killed before its commit). Call `restore_retired_assets` first. Meaningful
    only while no ingest runs (hold `library.ingest_lock()` alone)."""
    if not library.assets_dir.is_dir():
        return []
    with library.sessions() as session:
        ok = set(session.scalars(select(Document.id).where(Document.status == DocumentStatus.OK)))
    return sorted(
        path
        for path in library.assets_dir.iterdir()
        if path.is_dir() and (path.name.endswith(".partial") or path.name not in ok)
    )


def delete_document(
    library: Library, doc_id: str, index: ChunkIndex | None = None, *, owner: str | None = None
) -> Document:
    """Delete a document (by id or unique id prefix) with its pages, blocks, chunks and images.

    Only `owner`'s documents match (None: the local user's).

    Raises:
        LookupError: no document, or more than one, matches.
    """
    mine = owner_clause(library, owner)
    with library.sessions() as session, session.begin():
        matches = list(
            session.scalars(select(Document).where(Document.id_prefix(doc_id)).where(mine))
        )
        if not matches:
            raise LookupError(f"no document with id {doc_id!r} (see `folio docs`)")
        if len(matches) > 1:
            raise LookupError(f"id prefix {doc_id!r} matches {len(matches)} documents: give more characters")
        document = matches[0]
        chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.doc_id == document.id)))
        session.execute(delete(Document).where(Document.id == document.id))
    if index is not None and chunk_ids:
        index.remove(chunk_ids)
        index.flush()
    shutil.rmtree(library.assets_dir / document.id, ignore_errors=True)
    return document


def count_pages(paths: Sequence[Path]) -> int:
    """Total page count of the readable PDFs among `paths` (for progress bars; cheap)."""
    import pymupdf

    total = 0
    for path in paths:
        try:
            with pymupdf.open(path) as doc:
                total += doc.page_count if not doc.needs_pass else 0
        except (pymupdf.FileDataError, RuntimeError, ValueError, OSError):
            continue
    return total
