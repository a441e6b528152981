"""Crash safety: `folio ingest` SIGKILLed at random moments (app/reliability/crash.py, which
`python -m bench.crash` runs at full size), and a process killed between two index part writes.

After every kill the library passes `check_library` (database integrity, every OK document
whole, an index whose parts are of one save and, once opened, hold exactly the stored chunks),
and running the ingest again gives the library a run that was never killed gives.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select

import pipeline.library.search as search_module
from app.reliability.crash import DEFAULT_FILES, run
from models.config import EncoderConfig
from pipeline.library.check import Severity, check_library
from pipeline.library.search import LibraryIndex
from retrieval import HybridRetriever, RetrievalConfig, inspect_saved
from storage import Chunk, StorageConfig, open_library

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_FILES = (
    "papers/unstructured__multi-column_DPR.pdf",
    "robustness/pdfplumber__empty.pdf",
    "robustness/docling__invisible_text_layer.pdf",
)


def _assert_survived(report: dict, kills: int) -> None:
    assert report["kills"] == kills
    failed = [r for r in report["rounds"] if r["check_rc"] != 0 or r["errors"]]
    assert not failed, failed
    assert all(not any("torn" in line for line in r["errors"] + r["infos"]) for r in report["rounds"])
    assert report["final_matches_clean_run"], report


def test_three_kills_then_the_ingest_completes(shared_data: Path, tmp_path: Path) -> None:
    """A fixed-seed sample of the 20-kill run: BM25 only, checks in this process (seconds)."""
    report = run(
        3, seed=1, data_dir=shared_data, files=SAMPLE_FILES, bm25_only=True, work=tmp_path,
        complete_every=0.0, in_process_check=True,
    )  # fmt: skip
    _assert_survived(report, 3)


@pytest.mark.slow
def test_twenty_kills_with_the_default_settings(shared_data: Path, tmp_path: Path) -> None:
    """The issue's run: 20 kills, dense + BM25 as shipped, `folio check` after each (~30 min)."""
    report = run(20, seed=0, data_dir=shared_data, files=DEFAULT_FILES, work=tmp_path)
    _assert_survived(report, 20)


# A process that saves the index once, adds a second document, and is SIGKILLed inside the next
# save: after the BM25 part of the new generation is written, before the dense part and manifest.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import BagOfWordsEncoder
    import pipeline.library.search as search
    from models.config import EncoderConfig
    from retrieval import DenseIndex, RetrievalConfig
    from storage import Chunk, Document, DocumentStatus, StorageConfig, open_library

    search.make_encoders = lambda *a, **k: (BagOfWordsEncoder(), None)
    library = open_library(StorageConfig(library={library!r}))
    index = search.LibraryIndex(library, RetrievalConfig(), EncoderConfig())

    def store(n):
        doc_id = str(n) * 64
        rows = [(f"{{doc_id[:16]}}:{{i}}", f"doc{{n}} chunk {{i}} wing propeller") for i in range(20)]
        with library.sessions() as s, s.begin():
            s.add(Document(id=doc_id, file_name=f"{{n}}.pdf", title=None, page_count=0,
                           parser_version="t", status=DocumentStatus.OK, error=None))
            s.flush()
            s.add_all(Chunk(id=c, doc_id=doc_id, ordinal=i, kind="text", page_start=1, page_end=1,
                            block_ids=[], text=t, token_count=5) for i, (c, t) in enumerate(rows))
        index.add(rows)

    store(1)
    index.flush()
    store(2)
    DenseIndex.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    index.flush()
    print("not killed")
    """
)


def test_a_kill_between_index_part_writes_is_found_and_repaired(
    tmp_path: Path, monkeypatch, bow_encoder_class
) -> None:
    lib_dir = tmp_path / "lib"
    script = _CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), library=str(lib_dir))
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr

    library = open_library(StorageConfig(library=lib_dir))
    with library.sessions() as session:
        stored = set(session.scalars(select(Chunk.id)))
    assert len(stored) == 40
    # On disk: the first save, whole, and the new generation's BM25 part, named by no manifest.
    saved = inspect_saved(library.index_dir)
    assert not saved.problems and len(saved.chunk_ids) == 20 and set(saved.parts) == {"bm25", "dense"}
    assert [p.name.split(".")[0] for p in saved.stray] == ["bm25"]

    monkeypatch.setattr(search_module, "make_encoders", lambda *_a, **_k: (bow_encoder_class(), None))
    report = check_library(library, RetrievalConfig(), EncoderConfig())
    assert report.ok, [f.line() for f in report.findings]
    assert report.replayed == (20, 0)  # the second document, replayed from the database
    kinds = {(f.area, f.severity) for f in report.findings}
    assert ("index", Severity.LEFTOVER) in kinds and ("index", Severity.INFO) in kinds
    # The open saved a new generation: whole, every stored chunk in both parts, no stray file.
    after = inspect_saved(library.index_dir)
    assert not after.problems and not after.stray
    assert after.parts == {"bm25": stored, "dense": stored}
    assert check_library(library, RetrievalConfig(), EncoderConfig()).findings == []
    assert HybridRetriever.saved_generation(library.index_dir) != saved.generation
    index = LibraryIndex(library, RetrievalConfig(), EncoderConfig())
    assert {h.doc_id[0] for h in index.search("doc2", k=5, mode="dense")} == {"2"}
    library.close()
