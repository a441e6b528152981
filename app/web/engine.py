"""The engine behind the page: the Folio it serves (and each signed-in user's view of it),
background model loading, questions run with live stage status, and deletions."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.api import Folio
from app.web.chat import WAITING, AskOptions, Reply, respond, status_message
from pipeline.library.documents import DocumentInfo

logger = logging.getLogger(__name__)

# How often the chat's status line is refreshed while a question runs.
STATUS_EVERY_S = 0.5


@dataclass
class Engine:
    """The Folio behind the page, with background model loading and a status line.

    The search index and the answering models load in a background thread (`preload`) so the
    page comes up at once; a question or an upload waits for that load to finish.

    Attributes:
        folio: The library served.
        accounts: Logins are the library's accounts: each sees only its own documents.
        local_login: The single `serve.auth` login, which sees the local user's documents.
        status: What the background load is doing ("" when idle).
    """

    folio: Folio
    accounts: bool = False
    local_login: str | None = None
    status: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stops: set[str] = field(default_factory=set)  # browser sessions whose question must stop

    def for_user(self, name: str | None) -> Folio:
        """The library as the signed-in user `name` (None: no login) sees it."""
        if not self.accounts or name is None or name == self.local_login:
            return self.folio.as_user(None) if self.accounts else self.folio
        return self.folio.as_user(name)

    def preload(self) -> threading.Thread:
        """Start loading the index and models in the background."""
        self._lock.acquire()
        thread = threading.Thread(target=self._load, name="folio-preload", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        try:
            self.status = "Loading the search index…"
            self.folio.index.retriever  # noqa: B018 - loads (or builds) the index
            self.status = "Loading the answering model…"
            answerer = self.folio.answerer
            generator = answerer.generator()
            answerer.sampler(answerer.config.sampler, generator)
            self.status = ""
        except Exception as exc:  # noqa: BLE001 - the first question reports it again
            logger.warning("preloading failed (%s); models load on the first question", exc)
            self.status = ""
        finally:
            self._lock.release()

    @property
    def loading(self) -> bool:
        return self._lock.locked()

    def wait(self) -> None:
        """Block until a background load (if any) has finished."""
        with self._lock:
            pass

    def ask(
        self,
        me: Folio,
        question: str,
        history: Sequence[Mapping[str, Any]] | None,
        *,
        doc_ids: Sequence[str] | None = None,
        options: AskOptions | None = None,
        every_s: float = STATUS_EVERY_S,
    ) -> Iterator[Reply]:
        """`respond`, with a status line until the answer begins: the stage running now (as
        the answerer announces it) and the seconds so far, refreshed every `every_s`.

        The question runs in a worker thread so that the status can move while a stage blocks;
        closing this iterator (Stop) lets the worker stop at the next generated token.
        """
        events: queue.Queue[Reply | str | None] = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                for reply in respond(
                    question, history, me, doc_ids=doc_ids, options=options,
                    on_progress=events.put,
                ):  # fmt: skip
                    events.put(reply)
                    if stop.is_set():
                        return
            finally:
                events.put(None)

        start = time.monotonic()
        line, began = WAITING, False
        threading.Thread(target=work, name="folio-question", daemon=True).start()
        try:
            yield Reply(status_message(line, 0))
            while True:
                try:
                    event = events.get(timeout=every_s)
                except queue.Empty:
                    event = line if not began else ""
                if event is None:
                    return
                if isinstance(event, Reply):
                    began = True
                    yield event
                    if event.answer is not None:
                        return
                elif event and not began:
                    line = event
                    yield Reply(status_message(line, time.monotonic() - start))
        finally:
            stop.set()

    def request_stop(self, session: str | None) -> None:
        """Ask the question running for a browser session to stop (see `should_stop`)."""
        if session is not None:
            self._stops.add(session)

    def should_stop(self, session: str | None) -> bool:
        """Whether Stop was asked for this session's question; asking forgets the request."""
        if session is None or session not in self._stops:
            return False
        self._stops.discard(session)
        return True

    def delete(self, me: Folio, doc_ids: Sequence[str]) -> tuple[list[DocumentInfo], list[str]]:
        """Delete documents of `me`'s user, one by one: (those deleted, one error per failure)."""
        self.wait()
        removed, errors = [], []
        for doc_id in doc_ids:
            try:
                removed.append(me.delete(doc_id))
            except LookupError as exc:
                errors.append(str(exc))
        return removed, errors
