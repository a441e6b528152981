"""The Python API: `from app import Folio`.

Example:
    >>> from app import Folio
    >>> folio = Folio(library="my-library")
    >>> results = folio.ingest(["paper.pdf"])
    >>> [d.title for d in folio.documents()]
    >>> answer = folio.ask("What dataset do they evaluate on?")
    >>> answer.text, [(c.file_name, c.page, c.quote) for c in answer.citations]

Several users can share one library database (PostgreSQL): `Folio(..., user="alice")`, or
`folio.as_user("alice")`, sees, adds, searches, asks about and deletes only alice's documents.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.settings import Settings
from pipeline.answering.answer import Answerer
from pipeline.answering.batch import BatchProgress, BatchQuestion, as_batch, load_batch, run_batch
from pipeline.answering.types import Answer
from pipeline.config import resolve_options
from pipeline.ingestion.distributed import answer_batch_on_ray, check_address, ingest_on_ray
from pipeline.ingestion.ingest import IngestResult, Progress, delete_document, find_pdfs, ingest
from pipeline.library.check import CheckReport, check_library
from pipeline.library.documents import DocumentInfo, Library, list_documents, open_library
from pipeline.library.owners import check_user_name, owns_document
from pipeline.library.search import LibraryIndex, SearchHit

logger = logging.getLogger(__name__)


class _Opened:
    """What a Folio opens lazily, shared by its per-user views (`Folio.as_user`)."""

    def __init__(self) -> None:
        self.library: Library | None = None
        self.index: LibraryIndex | None = None
        self.answerer: Answerer | None = None
        # NOTE: one Folio serves concurrent threads (the web app, a caller's pool); the lock makes
        # the library, index and answerer open once. Each is thread-safe once open.
        self.lock = threading.RLock()


class Folio:
    """A Folio library: ingest PDFs, list and delete them, ask questions with citations.

    Args:
        settings: a Settings object; when None, built from `config` and `overrides`.
        config: a preset name or JSON file (see `Settings.load`).
        on_status: told about slow one-off work (loading models, building the search index).
        user: whose documents this Folio sees and adds (default: `settings.user`; None: the
            local user's). See `as_user`.
        **overrides: settings fields, e.g. `library="lib"`, `parse={"ocr": "never"}`.

    Raises:
        ValueError: A user name with characters other than letters, digits and . _ @ -.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: str | Path | None = None,
        on_status: Callable[[str], None] | None = None,
        user: str | None = None,
        **overrides: Any,
    ):
        self.settings = settings or Settings.load(config, **overrides)
        name = user if user is not None else self.settings.user
        self.user: str | None = check_user_name(name) if name is not None else None
        self._opened = _Opened()
        self._on_status = on_status or (lambda message: logger.info("%s", message))

    def as_user(self, user: str | None) -> Folio:
        """The same library as seen by `user` (None: the local user), sharing the open
        database, index and models; cheap enough to make per request.

        Raises:
            ValueError: A user name with characters other than letters, digits and . _ @ -.
        """
        view = copy.copy(self)
        view.user = check_user_name(user) if user is not None else None
        return view

    @property
    def library(self) -> Library:
        """The open library (opened, and created if needed, on first use)."""
        opened = self._opened
        with opened.lock:
            if opened.library is None:
                opened.library = open_library(self.settings.storage)
            return opened.library

    @property
    def index(self) -> LibraryIndex:
        """The library's search index (models load on first use)."""
        opened = self._opened
        with opened.lock:
            if opened.index is None:
                opened.index = LibraryIndex(
                    self.library, self.settings.retrieval, self.settings.encoders,
                    on_status=self._on_status,
                )
            return opened.index

    def ingest(
        self,
        paths: Iterable[str | Path],
        *,
        recursive: bool = False,
        reindex: bool = False,
        password: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        ray: bool | str = False,
    ) -> list[IngestResult]:
        """Ingest PDFs (files or folders). Bad files are recorded as failed, never raised.

        Args:
            ray: parse, OCR and embed on Ray workers (this process still stores everything):
                True for `settings.ray.address` (None: a local Ray started for the call), or
                an address ("auto", "ray://HOST:10001", "HOST:6379", "local"). Same results.

        Raises:
            ValueError: `ray` is not a Ray address.
            ConnectionError: no Ray at that address.

        Example:
            >>> [r.status for r in folio.ingest(["a.pdf", "a.pdf"])]
            ['added', 'unchanged']
        """
        files = find_pdfs([Path(p) for p in paths], recursive=recursive)
        s = self.settings
        if ray:
            return ingest_on_ray(
                files,
                self.library,
                parse_config=s.parse,
                chunk_config=s.chunk,
                ingest_config=s.ingest,
                retrieval_config=s.retrieval,
                encoder_config=s.encoders,
                ray_config=s.ray,
                address=_ray_address(ray),
                index=self.index,
                reindex=reindex,
                password=password,
                on_progress=on_progress,
                owner=self.user,
            )
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
            owner=self.user,
        )

    def documents(self) -> list[DocumentInfo]:
        """Every document of this user (failed ones too, with their error), newest first."""
        return list_documents(self.library, owner=self.user)

    def owns(self, doc_id: str) -> bool:
        """Whether `doc_id` (a full id) is one of this user's documents."""
        return owns_document(self.library, doc_id, self.user)

    def delete(self, doc_id: str) -> DocumentInfo:
        """Delete one of this user's documents by id or unique id prefix.

        Raises:
            LookupError: no document, or several, match.
        """
        removed = delete_document(self.library, doc_id, self.index, owner=self.user)
        return DocumentInfo(
            removed.id, removed.file_name, removed.title, removed.page_count, 0,
            str(removed.status), removed.error, removed.created,
        )

    def search(
        self, query: str, *, k: int = 10, mode: str | None = None, doc_ids: list[str] | None = None
    ) -> list[SearchHit]:
        """The best chunks for `query` (mode: bm25, splade, dense, hybrid, hybrid-prf), within
        `doc_ids` (ids, unique id prefixes or file names) when given.

        Example:
            >>> [(h.file_name, h.page) for h in folio.search("dense retrieval", k=3)]
        """
        return self.index.search(query, k=k, mode=mode, doc_ids=doc_ids, owner=self.user)

    @property
    def answerer(self) -> Answerer:
        """The question-answering pipeline (models load on the first question, once)."""
        opened = self._opened
        with opened.lock:
            if opened.answerer is None:
                s = self.settings
                opened.answerer = Answerer(
                    self.library,
                    self.index,
                    s.answer,
                    s.generator,
                    s.encoders,
                    model_cache=s.model_cache,
                )
            return opened.answerer

    def ask(
        self,
        question: str,
        *,
        doc_ids: Sequence[str] | None = None,
        on_progress: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Answer:
        """Answer a question from the library, with citations to the page and region.

        Args:
            question: The question.
            doc_ids: Only these documents (ids, unique id prefixes or file names); None: all.
            on_progress: Told a short status line as each stage starts ("Retrieving from the
                library…", "Sampling evidence (WuKong)…", ...).
            **overrides: For this question only: `k` (chunks retrieved), `budget` (evidence
                tokens), `sampler=False` (retrieved chunks in rank order, no WuKong sampling),
                `retrieval=False` (the document's first pages instead of retrieval),
                `context="none"` (no evidence), `model="path/or/name"`, `k_text`, `k_image`,
                `max_new_tokens`, `ask_citations`, or any other `AnswerConfig` field.

        Returns:
            An `Answer`: `text`, `citations` (doc_id, file_name, page, bbox, quote, block_id),
            the `evidence` the model read, and `stats` (per-stage kept/total items and tokens,
            milliseconds, TTFT, tokens/s).

        Raises:
            ValueError: A blank question, or `retrieval=False` without a document.
            LookupError: An unknown document.
            TypeError: An unknown override.

        Example:
            >>> answer = folio.ask("How many pages per second does the parser process?",
            ...                    doc_ids=["folio-guide.pdf"])
            >>> answer.text
            'more than ten pages per second'
            >>> [(c.file_name, c.page) for c in answer.citations]
            [('folio-guide.pdf', 2)]
            >>> folio.ask("...", sampler=False, budget=600).stats.stage("budget")
        """
        config, generator = resolve_options(self.settings.answer, self.settings.generator, **overrides)
        return self.answerer.ask(
            question, doc_ids=doc_ids, config=config, generator_config=generator, owner=self.user,
            on_progress=on_progress,
        )  # fmt: skip

    def ask_stream(
        self,
        question: str,
        *,
        doc_ids: Sequence[str] | None = None,
        on_progress: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Iterator[str | Answer]:
        """Answer a question as a stream: text deltas as they are generated, then the `Answer`.

        Takes the same arguments as `ask`.

        Example:
            >>> for part in folio.ask_stream("What does Figure 1 show?"):
            ...     if isinstance(part, str):
            ...         print(part, end="", flush=True)
            ...     else:
            ...         citations = part.citations
        """
        config, generator = resolve_options(self.settings.answer, self.settings.generator, **overrides)
        return self.answerer.stream(
            question, doc_ids=doc_ids, config=config, generator_config=generator, owner=self.user,
            on_progress=on_progress,
        )  # fmt: skip

    def ask_batch(
        self,
        questions: Iterable[str | Mapping[str, Any] | BatchQuestion] | str | Path,
        *,
        out: str | Path | None = None,
        doc_ids: Sequence[str] | None = None,
        on_progress: Callable[[BatchProgress], None] | None = None,
        ray: bool | str = False,
        **overrides: Any,
    ) -> list[Answer]:
        """Answer many questions, in order, loading the models once.

        Args:
            questions: Question strings, dicts (`question`, optional `doc_id`/`doc_ids`, `id`),
                or a JSONL file of them (one per line; MMLongBench `samples.json` also works).
            out: JSONL file to write answers to as they are made. Running the same batch again
                with the same `out` skips the questions already answered there (after a crash
                or Ctrl-C); at the end it holds one answer per question, in input order.
            doc_ids: Documents for questions that name none.
            on_progress: Called after each question with a `BatchProgress` (done, total, answer).
            ray: answer with a pool of Ray actors (`settings.ray.answer_workers`, each loading
                the models once): True or an address, as for `ingest`. Same answers (greedy
                decoding), same order and resumability.
            **overrides: As for `ask`, for every question.

        Returns:
            One `Answer` per question, in input order. A question that fails (blank, unknown
            document, model error) gets an `Answer` with `error` set; the batch goes on.

        Raises:
            TypeError: An unknown override (checked before any question is asked).
            FileNotFoundError: `questions` names a file that does not exist.

        Example:
            >>> answers = folio.ask_batch("questions.jsonl", out="answers.jsonl",
            ...                           on_progress=lambda p: print(p.done, "/", p.total))
            >>> [a.text for a in answers if a.error is None]
        """
        config, generator = resolve_options(self.settings.answer, self.settings.generator, **overrides)
        if isinstance(questions, str | Path):
            batch = load_batch(Path(questions), doc_ids=doc_ids)
        else:
            batch = as_batch(questions, doc_ids=doc_ids)
        if ray:
            s = self.settings
            return answer_batch_on_ray(
                batch,
                storage=s.storage,
                retrieval=s.retrieval,
                encoders=s.encoders,
                answer=config,
                generator=generator,
                model_cache=s.model_cache,
                ray_config=s.ray,
                address=_ray_address(ray),
                out=Path(out) if out is not None else None,
                on_progress=on_progress,
                owner=self.user,
            )
        answerer = self.answerer

        def ask_one(item: BatchQuestion) -> Answer:
            return answerer.ask(
                item.question,
                doc_ids=item.doc_ids,
                config=config,
                generator_config=generator,
                id=item.id,
                owner=self.user,
            )

        return run_batch(
            batch, ask_one, out=Path(out) if out is not None else None, on_progress=on_progress
        )

    def check(self, *, repair: bool = False) -> CheckReport:
        """Verify the library (database, documents, search index, asset folders).

        Args:
            repair: also mark incomplete documents failed (ingest them again) and remove
                leftovers of interrupted runs.

        Returns:
            A `CheckReport`: `ok`, `problems`, every finding (`line()` each), `summary()`.
        """
        s = self.settings
        return check_library(
            self.library, s.retrieval, s.encoders, repair=repair, index=self.index, on_status=self._on_status
        )

    def close(self) -> None:
        """Close the library (for every view of it made by `as_user`)."""
        opened = self._opened
        with opened.lock:
            opened.answerer = None
            opened.index = None
            if opened.library is not None:
                opened.library.close()
                opened.library = None

    def __enter__(self) -> Folio:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _ray_address(ray: bool | str) -> str | None:
    """The address a `ray=` argument names (None: the configured one, else a local Ray)."""
    return check_address(ray) if isinstance(ray, str) else None
