"""Questions while an ingest runs, in one process through the Python API.

Four threads ask questions in a loop while a fifth ingests real PDFs through the same `Folio`.
No question may fail (no "database is locked", no race in the index or the model caches), and
every answer must be consistent with a committed state of the library: it only reads documents
whose rows were committed before it finished, and every block it cites exists with the page it
names. The generator is the tiny random model of tests/conftest.py: the mechanics, in seconds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app import Answer, Folio
from pipeline.ingestion.ingest import Progress
from pipeline.ingestion.sample import write_sample_pdf
from storage import Block, Document, DocumentStatus

QUESTIONS = [
    "What is the default chunk size?",
    "How is a document identified?",
    "Which retriever is trained on question and passage pairs?",
    "What does the dual encoder compute?",
]
NEW_DOCUMENTS = [
    ("papers", "unstructured__multi-column_DPR.pdf"),
    ("papers", "paperqa__pasa.pdf"),
]


@pytest.fixture(autouse=True)
def _fake_text_encoder(bow_encoder_class):
    """The sampler's text encoder: the bag-of-words fake (MiniLM has its own tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("models.encoders.MiniLMEncoder", lambda _config=None: bow_encoder_class())
        yield


def test_four_questions_while_an_ingest_runs(
    tmp_path: Path, tiny_settings, shared_data: Path
) -> None:
    paths = [shared_data / "pdfs" / folder / name for folder, name in NEW_DOCUMENTS]
    for path in paths:
        if not path.exists():
            pytest.skip(f"{path} not found (set FOLIO_SHARED_DATA)")
    sample = write_sample_pdf(tmp_path / "folio-guide.pdf")
    library = tmp_path / "lib"
    with Folio(library=library, **tiny_settings(token_budget=300)) as folio:
        (first,) = folio.ingest([sample])
        assert first.status == "added"

    # A fresh Folio: the four threads also race to open the index and load the models.
    with Folio(library=library, **tiny_settings(token_budget=300)) as folio:
        committed: dict[str, float] = {first.doc_id: 0.0}
        ingest_done = threading.Event()
        failures: list[str] = []
        answers: list[tuple[float, float, Answer]] = []  # (started, finished, answer)
        lock = threading.Lock()

        def on_progress(event: Progress) -> None:
            if event.kind == "document" and event.result and event.result.status == "added":
                with lock:
                    committed[event.result.doc_id] = time.monotonic()

        def ingest() -> None:
            try:
                results = folio.ingest(paths, on_progress=on_progress)
                bad = [r for r in results if r.status != "added"]
                if bad:
                    failures.append(f"ingest: {bad}")
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                failures.append(f"ingest raised {type(exc).__name__}: {exc}")
            finally:
                ingest_done.set()

        def ask(worker: int) -> None:
            turn = 0
            while True:
                after_ingest = ingest_done.is_set()  # the last question starts after it
                question = QUESTIONS[(worker + turn) % len(QUESTIONS)]
                started = time.monotonic()
                try:
                    answer = folio.ask(question)
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    failures.append(f"ask {question!r} raised {type(exc).__name__}: {exc}")
                    return
                with lock:
                    answers.append((started, time.monotonic(), answer))
                turn += 1
                if after_ingest:
                    return

        askers = [threading.Thread(target=ask, args=(w,)) for w in range(4)]
        for thread in askers:
            thread.start()
        ingester = threading.Thread(target=ingest)
        ingester.start()
        ingester.join(timeout=600)
        for thread in askers:
            thread.join(timeout=600)

        assert not failures, failures
        assert not ingester.is_alive() and not any(t.is_alive() for t in askers)
        errors = [a.error for _, _, a in answers if a.error is not None]
        assert not errors, errors
        during = [a for started, _, a in answers if started < max(committed.values())]
        assert len(during) >= 4, "the questions did not overlap the ingest"

        with folio.library.sessions() as session:
            ok = set(session.scalars(select(Document.id).where(Document.status == DocumentStatus.OK)))
            blocks = {
                b.id: (b.doc_id, b.page)
                for b in session.scalars(select(Block).where(Block.doc_id.in_(ok)))
            }
        assert ok == set(committed)
        for _, finished, answer in answers:
            for item in answer.evidence:
                # Read only from documents committed before the answer was finished.
                assert committed[item.doc_id] <= finished, (answer.question, item.doc_id)
                assert all(blocks[b] == (item.doc_id, item.page) for b in item.block_ids)
            for citation in answer.citations:
                assert blocks[citation.block_id] == (citation.doc_id, citation.page)
        # Questions about the new papers found them once they were in.
        late = [a for started, _, a in answers if started > max(committed.values())]
        assert any(item.doc_id != first.doc_id for a in late for item in a.evidence)
