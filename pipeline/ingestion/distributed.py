"""Ray for the heavy, parallel work: `folio ingest --ray` and `folio batch --ray`.

Ingestion. Actors on the Ray cluster each take one PDF at a time: they parse it in a parser
process of their own, under the same deadline and memory limit as the local path
(`pipeline.ingestion.isolation`, OCR included), then chunk it and encode the chunks with the library
index's encoders, which load once per actor. They send back the parsed document, its page images
and the encoded chunks. This process stays the only writer: `pipeline.ingestion.ingest.ingest` stores each
document in one transaction and the index takes the encoded chunks, under the same locks as
without Ray. A document whose parser crashes, hangs or runs out of memory fails with the same
one-line reason as without Ray; one whose actor dies fails saying so, the actor is replaced and
the run goes on.

Batch answering. A pool of actors, each opening the library and loading the answering models
once, answers the questions; `pipeline.answering.batch.run_batch_parallel` writes the answers as they come
and leaves the output file in input order and resumable.

Ingest workers read nothing from this machine's disk (PDFs and images travel through Ray's object
store). Answering actors open the library: on a cluster, give it a shared database (PostgreSQL)
and a library path that exists on every node. Every node needs the same Folio (checked). Ray is
imported only inside this module's functions, when one of them runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import EncoderConfig, GeneratorConfig
from pipeline.answering.answer import Answerer
from pipeline.answering.batch import BatchProgress, BatchQuestion, answer_one, run_batch_parallel
from pipeline.answering.types import Answer
from pipeline.config import AnswerConfig, ChunkConfig, IngestConfig, ParseConfig, RayConfig
from pipeline.ingestion import ingest as ingest_module  # late lookups: tests replace its tasks
from pipeline.ingestion.ingest import (
    IngestResult,
    Progress,
    chunk_texts,
    encode_document_blocks,
    ingest,
    parse_failure,
)
from pipeline.ingestion.isolation import TaskStatus, WorkerPool
from pipeline.ingestion.parse import PARSER_VERSION, ParsedDocument
from pipeline.library.block_vectors import EncodedBlocks, EncoderIdentity, encoder_identity
from pipeline.library.search import LibraryIndex, index_encoders, index_key
from retrieval import EncodedChunks, HybridRetriever, RetrievalConfig
from storage import Library, StorageConfig, open_library

logger = logging.getLogger(__name__)

__all__ = [
    "WorkerTiming",
    "answer_batch_on_ray",
    "check_address",
    "ingest_on_ray",
    "ray_session",
]

_POLL_S = 0.2  # how often the driver passes page progress on while it waits for workers
_ADDRESS = re.compile(r"^(local|auto|ray://\S+|[\w.-]+:\d{1,5})$")


def check_address(address: str) -> str:
    """`address`, if it reads as a Ray address.

    Raises:
        ValueError: not 'local', 'auto', 'ray://HOST:PORT' or 'HOST:PORT'.
    """
    if not _ADDRESS.match(address):
        raise ValueError(
            f"{address!r} is not a Ray address (local, auto, ray://HOST:PORT or HOST:PORT)"
        )
    return address


@contextmanager
def ray_session(address: str | None, config: RayConfig) -> Iterator[Any]:
    """The `ray` module, initialised: the caller's Ray if it already ran `ray.init` (tests,
    notebooks), else the Ray at `address` (default `config.address`), else a local Ray started
    for this block and stopped after it.

    Raises:
        ConnectionError: no Ray answers at `address`.
    """
    import ray  # NOTE: here only: Folio without --ray never imports Ray (~1 s, ~100 MB)

    if ray.is_initialized():
        yield ray
        return
    address = address or config.address
    # NOTE: the workers' logs stay in Ray's session folder (session_latest/logs under Ray's temporary folder);
    # relayed here they would tear the progress bars.
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address in (None, "local"):
            ray.init(num_cpus=config.local_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
        else:
            if address != "auto":
                _listening(address)
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        raise ConnectionError(
            f"cannot connect to Ray at {address} ({_first_line(exc)}): start it with "
            "`ray start --head`, or give --ray no address for a local Ray"
        ) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _listening(address: str, timeout_s: float = 5.0) -> None:
    """Raise OSError unless something accepts connections at the address's HOST:PORT.

    NOTE: `ray.init` retries an address where nothing listens for minutes, printing warnings.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s):
        pass


# ---------------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class WorkerTiming:
    """What one Ray worker spent on one document (per-worker rates come from these)."""

    worker: str  # "host:pid" of the actor
    file_name: str
    pages: int
    chunks: int
    parse_s: float  # in the worker's parser process, OCR included, start to result
    embed_s: float  # chunking, then every index encoder (BM25 analysis, dense, SPLADE)


@dataclass(frozen=True)
class _Done:
    """What an ingest worker sends back for one document: the parse, or why it failed."""

    parsed: ParsedDocument | None = None
    error: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # page images, figure crops
    chunks: tuple[tuple[str, str], ...] = ()  # (chunk_id, text), as storing it will index them
    encoded: EncodedChunks | None = None
    blocks: tuple[EncoderIdentity, EncodedBlocks] | None = None  # the sampler's block vectors
    parse_s: float = 0.0
    embed_s: float = 0.0


class _IngestWorker:
    """A Ray actor that parses PDFs in a parser process of its own and encodes their chunks.

    NOTE: top-level and not decorated, so this module imports without Ray (`ray.remote` wraps it
    when a run starts) and actors import it by name.
    """

    def __init__(
        self,
        parse_config: ParseConfig,
        chunk_config: ChunkConfig,
        ingest_config: IngestConfig,
        retrieval: RetrievalConfig,
        encoders: EncoderConfig,
        embed: bool,
        parse_task: Callable[..., ParsedDocument | str],
        events: Any,  # ray.util.queue.Queue of (key, pages done, page count, pages OCR'd)
    ) -> None:
        self._parse_config = parse_config
        self._chunk_config = chunk_config
        self._ingest_config = ingest_config
        self._retrieval = retrieval
        self._encoders = encoders
        self._embed = embed
        self._parse_task = parse_task
        self._events = events
        self._encoder: HybridRetriever | None = None
        self._pool: WorkerPool | None = None
        self._key: int | None = None  # the document being parsed

    def start(self) -> tuple[str, str, str]:
        """Load the encoders and start the parser process, once.

        Returns:
            (parser version, index key, "host:pid"), for the driver to check.
        """
        if self._embed:
            dense, sparse = index_encoders(self._retrieval, self._encoders)
            self._encoder = HybridRetriever.create(
                dense_encoder=dense, sparse_encoder=sparse, config=self._retrieval
            )
            # The weights load now, not inside the first document's embedding time.
            self._encoder.encode_chunks([("warm-up", "Folio loads its encoders once.")])
        self._pool = WorkerPool(
            self._parse_task,
            workers=1,
            timeout_s=self._ingest_config.parse_timeout_s,
            memory_mb=self._ingest_config.parse_memory_mb,
            on_event=self._relay,
            initializer=ingest_module.init_parse_worker,
        )
        key = index_key(self._retrieval, self._encoders)
        return PARSER_VERSION, key, f"{socket.gethostname()}:{os.getpid()}"

    def process(self, key: int, name: str, data: bytes, doc_id: str, password: str | None) -> _Done:
        """Parse one PDF, given as its bytes (workers need no access to the driver's disk),
        and encode its chunks; a failure comes back as the one-line reason of the local path."""
        assert self._pool is not None, "start() first"
        with tempfile.TemporaryDirectory(prefix="folio-ray-") as tmp:
            source = Path(tmp) / name
            source.write_bytes(data)
            assets = Path(tmp) / "assets"
            self._key = key
            started = time.perf_counter()
            args = (str(source), doc_id, self._parse_config, str(assets), f"assets/{doc_id}", password)
            (outcome,) = list(self._pool.run([(key, args)]))
            parse_s = time.perf_counter() - started
            if outcome.status != TaskStatus.OK:
                return _Done(error=parse_failure(name, outcome, self._ingest_config), parse_s=parse_s)
            if isinstance(outcome.value, str):
                return _Done(error=outcome.value, parse_s=parse_s)
            parsed: ParsedDocument = outcome.value
            started = time.perf_counter()
            chunks = tuple(chunk_texts(parsed, self._chunk_config))
            encoded = self._encoder.encode_chunks(chunks) if self._encoder is not None and chunks else None
            blocks = encode_document_blocks(parsed, self._block_encoder())
            embed_s = time.perf_counter() - started
            files = {p.name: p.read_bytes() for p in sorted(assets.iterdir())} if assets.is_dir() else {}
        return _Done(parsed, None, files, chunks, encoded, blocks, parse_s, embed_s)

    def _block_encoder(self) -> object | None:
        """The dense encoder, when block vectors are stored (as `ingest` picks it locally)."""
        if not self._ingest_config.store_block_vectors or self._encoder is None:
            return None
        dense = self._encoder.dense
        return dense.encoder if dense is not None else None

    def _relay(self, event: tuple[str, int, int, int]) -> None:
        _, done, total, ocr_pages = event
        self._events.put_nowait((self._key, done, total, ocr_pages))


class _PreEncodedIndex:
    """The `ChunkIndex` that ingestion keeps in step, fed with the chunks the workers encoded.

    A document's chunks are taken only when storing it produced exactly the (chunk_id, text)
    pairs the worker encoded; otherwise they are encoded here (never silently different).
    """

    def __init__(self, index: LibraryIndex) -> None:
        self._index = index
        self.encoded: dict[tuple[tuple[str, str], ...], EncodedChunks] = {}
        self.dense_encoder = _WorkerBlockVectors(index)  # what `ingest` stores block vectors with

    def add(self, chunks: Sequence[tuple[str, str]]) -> None:
        encoded = self.encoded.pop(tuple(chunks), None)
        if encoded is not None:
            self._index.add_encoded(encoded)
            return
        if chunks:
            logger.warning("%d chunks stored differ from the worker's; encoding them here", len(chunks))
        self._index.add(chunks)

    def remove(self, chunk_ids: Sequence[str]) -> None:
        self._index.remove(chunk_ids)

    def flush(self) -> None:
        self._index.flush()


class _WorkerBlockVectors:
    """The block encoder `ingest` sees on Ray: it hands back the vectors the worker computed for
    the document being stored (`receive` is told them just before it is stored); a text the
    worker did not send is encoded here (never silently different). Without vectors from the
    worker it has no identity, so nothing is stored (questions fill them later).
    """

    def __init__(self, index: LibraryIndex) -> None:
        self._index = index
        self._identity: EncoderIdentity | None = None
        self._vectors: dict[str, Any] = {}

    def receive(self, blocks: tuple[EncoderIdentity, EncodedBlocks] | None) -> None:
        self._identity, encoded = blocks if blocks is not None else (None, {})
        self._vectors = {text: vector for text, vector in encoded.values()}

    @property
    def name(self) -> str | None:
        return self._identity.name if self._identity is not None else None

    @property
    def dim(self) -> int | None:
        return self._identity.dim if self._identity is not None else None

    def encode_documents(self, texts: Sequence[str]) -> list[Any]:
        missing = [t for t in texts if t not in self._vectors]
        if missing:
            # NOTE: `_check` made sure the workers' encoder settings are this index's.
            local = self._index.dense_encoder
            if local is None or encoder_identity(local) != self._identity:
                raise RuntimeError("block vectors: the workers' dense encoder is not this index's")
            logger.warning("%d block texts differ from the worker's; encoding them here", len(missing))
            self._vectors.update(zip(missing, local.encode_documents(missing), strict=True))
        return [self._vectors[t] for t in texts]


def ingest_on_ray(
    paths: Sequence[Path],
    library: Library,
    *,
    parse_config: ParseConfig,
    chunk_config: ChunkConfig,
    ingest_config: IngestConfig,
    retrieval_config: RetrievalConfig,
    encoder_config: EncoderConfig,
    ray_config: RayConfig,
    address: str | None = None,
    index: LibraryIndex | None = None,
    reindex: bool = False,
    password: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_timing: Callable[[WorkerTiming], None] | None = None,
    parse_task: Callable[..., ParsedDocument | str] | None = None,
    owner: str | None = None,
) -> list[IngestResult]:
    """`pipeline.ingestion.ingest.ingest` with parsing and encoding on Ray workers: the same results, and
    the same guarantees (this process stores each document in one transaction and keeps the
    index; a bad file fails alone, with its one-line reason).

    Args:
        paths: PDF files (use `find_pdfs` to expand folders).
        library: the open library.
        retrieval_config, encoder_config: the settings `index` was opened with (the workers
            encode with the same encoders).
        ray_config: how many workers, CPUs each, and the default address.
        address: the Ray to use (see `ray_session`); Ray starts only if a document needs parsing.
        index: the library's search index.
        on_progress: as for `ingest` (page events come from the workers).
        on_timing: called in this process with each parsed document's `WorkerTiming`.
        parse_task: the function each worker's parser process runs (default: the local path's;
            tests pass a faulty one).
        owner: the user whose library the documents join (as for `ingest`).

    Returns:
        One `IngestResult` per path, in order.

    Raises:
        ConnectionError: no Ray at `address`.
        RuntimeError: the workers cannot start, or run another Folio than this process.
    """
    run = _RayIngest(
        chunk_config,
        retrieval_config,
        encoder_config,
        ray_config,
        address,
        index,
        on_timing or (lambda _timing: None),
        parse_task or ingest_module.parse_in_worker,
    )
    return ingest(
        paths,
        library,
        parse_config=parse_config,
        chunk_config=chunk_config,
        ingest_config=ingest_config,
        index=run.index,
        reindex=reindex,
        password=password,
        on_progress=on_progress,
        owner=owner,
        parse_all=run.parse_all,
    )


class _RayIngest:
    """One `ingest_on_ray` run: its `parse_all` for `ingest`, and the index it feeds."""

    def __init__(
        self,
        chunk_config: ChunkConfig,
        retrieval: RetrievalConfig,
        encoders: EncoderConfig,
        ray_config: RayConfig,
        address: str | None,
        index: LibraryIndex | None,
        on_timing: Callable[[WorkerTiming], None],
        parse_task: Callable[..., ParsedDocument | str],
    ) -> None:
        self._chunk_config = chunk_config
        self._retrieval = retrieval
        self._encoders = encoders
        self._ray_config = ray_config
        self._address = address
        self._library_index = index
        self.index = _PreEncodedIndex(index) if index is not None else None
        self._on_timing = on_timing
        self._parse_task = parse_task

    def parse_all(
        self,
        todo: list[tuple[int, Path, str]],
        library: Library,
        parse_config: ParseConfig,
        ingest_config: IngestConfig,
        password: str | None,
        notify: Callable[[Progress], None],
    ) -> Generator[tuple[int, Path, ParsedDocument | str], None, None]:
        """Yield (position, path, ParsedDocument | one-line error) as the workers finish (the
        `pipeline.ingestion.ingest.ParseAll` of this run)."""
        if not todo:
            return
        paths = {i: path for i, path, _ in todo}
        with ray_session(self._address, self._ray_config) as ray:
            from ray.util.queue import Queue

            if self._library_index is not None:
                # Opened before the first document is stored: opening after it would replay
                # (and encode here) that document's chunks from the database.
                self._library_index.retriever  # noqa: B018

            events = Queue()
            cpus = self._ray_config.cpus_per_worker
            actor_class = ray.remote(_IngestWorker).options(num_cpus=cpus, max_restarts=0)
            args = (
                parse_config, self._chunk_config, ingest_config, self._retrieval,
                self._encoders, self.index is not None, self._parse_task, events,
            )  # fmt: skip
            size = _fit(ray, min(self._ray_config.ingest_workers, len(todo)), cpus)
            workers = _ActorPool(ray, lambda: actor_class.remote(*args), size, self._check)
            pending = deque(todo)
            running: dict[Any, tuple[Any, int, Path, str]] = {}
            try:
                while pending or running:
                    yield from self._dispatch(pending, running, workers, password)
                    if not running:
                        continue
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_S)
                    _relay_pages(events, paths, notify)
                    finished = []
                    for ref in ready:
                        actor, i, path, doc_id = running.pop(ref)
                        finished.append((i, path, doc_id, actor, self._receive(ray, ref, path.name, actor, workers)))
                    # The next documents go out before these are stored: workers never wait for
                    # the database.
                    yield from self._dispatch(pending, running, workers, password)
                    for i, path, doc_id, actor, done in finished:
                        yield i, path, self._outcome(done, doc_id, path, library, workers.names.get(actor, "?"))
            finally:
                workers.stop()
                events.shutdown()

    def _dispatch(
        self, pending: deque, running: dict, workers: _ActorPool, password: str | None
    ) -> Iterator[tuple[int, Path, str]]:
        """Give idle workers the next documents; yield those that cannot even be read here."""
        while pending and workers.idle:
            i, path, doc_id = pending.popleft()
            try:
                data = path.read_bytes()
            except OSError as exc:
                yield i, path, f"{path.name}: cannot read ({exc.strerror})"
                continue
            actor = workers.idle.pop()
            running[actor.process.remote(i, path.name, data, doc_id, password)] = (actor, i, path, doc_id)

    def _check(self, started: tuple[str, str, str]) -> None:
        parser_version, key, name = started
        ours = (PARSER_VERSION, index_key(self._retrieval, self._encoders))
        if (parser_version, key) != ours:
            raise RuntimeError(
                f"the Ray worker {name} runs another Folio (parser {parser_version}, index key "
                f"{key}; here {ours[0]}, {ours[1]}): install this Folio on every node"
            )

    def _receive(self, ray: Any, ref: Any, name: str, actor: Any, workers: _ActorPool) -> _Done:
        """The worker's result, or a failure saying what happened to the worker."""
        try:
            done = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            workers.replace(actor)
            return _Done(
                error=f"{name}: the Ray worker ingesting it died ({_first_line(exc)}); "
                "run the same command again to retry it"
            )
        except ray.exceptions.RayTaskError as exc:
            workers.idle.append(actor)
            cause = exc.cause if exc.cause is not None else exc
            return _Done(error=f"{name}: unexpected error in the Ray worker ({type(cause).__name__}: {_first_line(cause)})")
        except ray.exceptions.RayError as exc:
            workers.idle.append(actor)
            return _Done(error=f"{name}: Ray lost the worker's result ({_first_line(exc)}); run the same command again")
        workers.idle.append(actor)
        return done

    def _outcome(self, done: _Done, doc_id: str, path: Path, library: Library, worker: str) -> ParsedDocument | str:
        """What `ingest` stores: the parsed document, with its images in place and its encoded
        chunks ready for the index; or the one-line reason it failed."""
        if done.parsed is None:
            return done.error or f"{path.name}: no result from the Ray worker"
        partial = library.assets_dir / f"{doc_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        if done.files:
            partial.mkdir(parents=True)
            for file_name, data in done.files.items():
                (partial / Path(file_name).name).write_bytes(data)
        if self.index is not None and done.encoded is not None:
            self.index.encoded[done.chunks] = done.encoded
        if self.index is not None:
            self.index.dense_encoder.receive(done.blocks)
        self._on_timing(
            WorkerTiming(worker, path.name, done.parsed.page_count, len(done.chunks), done.parse_s, done.embed_s)
        )
        return done.parsed


def _relay_pages(events: Any, paths: dict[int, Path], notify: Callable[[Progress], None]) -> None:
    """Pass the workers' page events on, in this process."""
    waiting = events.qsize()
    if waiting:
        for key, done, total, ocr_pages in events.get_nowait_batch(waiting):
            notify(Progress("page", paths[key], done, total, ocr_pages=ocr_pages))


# ----------------------------------------------------------------------------------- batch


class _AnswerWorker:
    """A Ray actor that opens the library and loads the answering models once, then answers.

    NOTE: top-level and not decorated, like `_IngestWorker`.
    """

    def __init__(
        self,
        storage: StorageConfig,
        retrieval: RetrievalConfig,
        encoders: EncoderConfig,
        answer: AnswerConfig,
        generator: GeneratorConfig,
        model_cache: Path | None,
        owner: str | None = None,
    ) -> None:
        self._owner = owner
        self._storage = storage
        self._retrieval = retrieval
        self._encoders = encoders
        self._answer = answer
        self._generator = generator
        self._model_cache = model_cache
        self._answerer: Answerer | None = None

    def start(self) -> str:
        """Open the library and its index and load the generator, once; returns "host:pid"."""
        library = open_library(self._storage, create=False)
        index = LibraryIndex(library, self._retrieval, self._encoders)
        self._answerer = Answerer(
            library, index, self._answer, self._generator, self._encoders, model_cache=self._model_cache
        )
        index.retriever  # noqa: B018 - opens (and reconciles) the index now
        self._answerer.generator(self._generator)
        return f"{socket.gethostname()}:{os.getpid()}"

    def answer(self, item: BatchQuestion) -> Answer:
        """One question's answer, or the answer recording why it failed."""
        assert self._answerer is not None, "start() first"
        answerer = self._answerer

        def ask(q: BatchQuestion) -> Answer:
            return answerer.ask(
                q.question, doc_ids=q.doc_ids, config=self._answer, generator_config=self._generator,
                id=q.id, owner=self._owner,
            )  # fmt: skip

        return answer_one(item, ask)


def answer_batch_on_ray(
    questions: Sequence[BatchQuestion],
    *,
    storage: StorageConfig,
    retrieval: RetrievalConfig,
    encoders: EncoderConfig,
    answer: AnswerConfig,
    generator: GeneratorConfig,
    model_cache: Path | None,
    ray_config: RayConfig,
    address: str | None = None,
    out: Path | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
    owner: str | None = None,
) -> list[Answer]:
    """`pipeline.answering.batch.run_batch` with a pool of Ray actors answering: the same answers (with
    greedy decoding), written to `out` as they come and left there in input order; a rerun with
    the same `out` answers only the questions not answered there yet.

    Args:
        questions: The batch.
        storage, retrieval, encoders: the library the actors open (on a cluster: a shared
            database and a library path that exists on every node).
        answer, generator: the settings every question is answered with (`resolve_options`).
        model_cache: folder of converted packaged models (None: the library's).
        ray_config: how many actors (`answer_workers`), CPUs and GPUs each, default address.
        address: the Ray to use (see `ray_session`); Ray starts only if a question needs asking.
        out: JSONL file of answers, resumed from (see `run_batch`).
        on_progress: called in this process after every question.
        owner: whose documents the questions are answered from (as for `Answerer.ask`).

    Returns:
        One `Answer` per question, in input order; a failed question (or one whose actor died)
        has its `error` set, and is asked again on a rerun.

    Raises:
        ConnectionError: no Ray at `address`.
        RuntimeError: the actors cannot start (e.g. no library at that path on a node).
    """
    storage = StorageConfig(library=storage.library.expanduser().resolve(), database_url=storage.database_url)

    def answer_all(todo: Sequence[tuple[int, BatchQuestion]]) -> Iterator[tuple[int, Answer]]:
        remote = []
        for position, item in todo:
            if item.error is not None:
                yield position, answer_one(item, _never_asked)
            else:
                remote.append((position, item))
        if not remote:
            return
        with ray_session(address, ray_config) as ray:
            cpus = ray_config.cpus_per_worker
            actor_class = ray.remote(_AnswerWorker).options(
                num_cpus=cpus, num_gpus=ray_config.gpus_per_answer_worker, max_restarts=0
            )
            size = _fit(ray, min(ray_config.answer_workers, len(remote)), cpus)
            args = (storage, retrieval, encoders, answer, generator, model_cache, owner)
            workers = _ActorPool(ray, lambda: actor_class.remote(*args), size)
            pending = deque(remote)
            running: dict[Any, tuple[Any, int, BatchQuestion]] = {}
            try:
                while pending or running:
                    while pending and workers.idle:
                        position, item = pending.popleft()
                        actor = workers.idle.pop()
                        running[actor.answer.remote(item)] = (actor, position, item)
                    ready, _ = ray.wait(list(running), num_returns=1)
                    for ref in ready:
                        actor, position, item = running.pop(ref)
                        yield position, _answer_of(ray, ref, item, actor, workers)
            finally:
                workers.stop()

    return run_batch_parallel(questions, answer_all, out=out, on_progress=on_progress)


def _answer_of(ray: Any, ref: Any, item: BatchQuestion, actor: Any, workers: _ActorPool) -> Answer:
    """The actor's answer, or one recording what happened to the actor."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        workers.replace(actor)
        error = f"the Ray worker answering it died ({_first_line(exc)}); run the same command again to retry it"
    except ray.exceptions.RayError as exc:
        workers.idle.append(actor)
        error = f"Ray lost the answer ({_first_line(exc)}); run the same command again to retry it"
    else:
        workers.idle.append(actor)
        return result
    return Answer.failed(item.question, error, doc_ids=item.doc_ids or (), id=item.id)


def _never_asked(item: BatchQuestion) -> Answer:
    raise AssertionError(f"a question that could not be read was asked: {item!r}")


# ------------------------------------------------------------------------------ the actors


class _ActorPool:
    """Started actors: idle ones, and a replacement for each that dies.

    Args:
        ray: the initialised `ray` module.
        make: creates one actor (with a `start()` method).
        size: how many actors.
        check: raises on a `start()` result that must stop the run.
    """

    def __init__(self, ray: Any, make: Callable[[], Any], size: int, check: Callable[[Any], None] | None = None) -> None:
        self._ray = ray
        self._make = make
        self._check = check
        self.names: dict[Any, str] = {}
        self.idle: list[Any] = []
        actors = [make() for _ in range(size)]
        self._all = list(actors)
        starts = [actor.start.remote() for actor in actors]
        for actor, ref in zip(actors, starts, strict=True):
            self._started(actor, ref)

    def _started(self, actor: Any, ref: Any) -> None:
        try:
            result = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            self.stop()
            cause = getattr(exc, "cause", None) or exc
            raise RuntimeError(
                f"Ray workers cannot start ({type(cause).__name__}: {_first_line(cause)}); "
                "is this Folio installed on every node?"
            ) from exc
        if self._check is not None:
            try:
                self._check(result)
            except Exception:
                self.stop()
                raise
        self.names[actor] = result if isinstance(result, str) else result[-1]
        self.idle.append(actor)

    def replace(self, dead: Any) -> None:
        """Start another actor in place of a dead one."""
        self._kill(dead)
        actor = self._make()
        self._all.append(actor)
        self._started(actor, actor.start.remote())

    def stop(self) -> None:
        for actor in self._all:
            self._kill(actor)
        self._all.clear()
        self.idle.clear()

    def _kill(self, actor: Any) -> None:
        if actor in self._all:
            self._all.remove(actor)
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(actor, no_restart=True)


def _fit(ray: Any, wanted: int, cpus_each: float) -> int:
    """How many actors of `cpus_each` CPUs the cluster holds, at most `wanted` (at least 1):
    more would wait for CPUs that never come."""
    total = float(ray.cluster_resources().get("CPU", 0))
    fits = max(1, int(total // cpus_each))
    if wanted > fits:
        logger.warning(
            "%d Ray workers of %g CPUs each need %g CPUs, the cluster has %g: using %d",
            wanted, cpus_each, wanted * cpus_each, total, fits,
        )  # fmt: skip
    return min(wanted, fits)


def _first_line(exc: BaseException | str) -> str:
    lines = str(exc).strip().splitlines()
    line = " ".join(lines[0].split()) if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
