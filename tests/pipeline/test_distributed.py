"""Ray ingestion and batch answering (`pipeline.ingestion.distributed`) against the local paths.

One local Ray (2 CPUs) serves the module. Real PDFs from the shared data; the batch uses the
tiny random generator with greedy decoding, so its answers are comparable exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from models.config import EncoderConfig, GeneratorConfig
from pipeline.answering.answer import Answerer
from pipeline.answering.batch import BatchQuestion, run_batch
from pipeline.config import AnswerConfig, ChunkConfig, IngestConfig, OcrMode, ParseConfig, RayConfig
from pipeline.ingestion.distributed import answer_batch_on_ray, check_address, ingest_on_ray
from pipeline.ingestion.ingest import STORE_STAMP, ingest
from pipeline.library.check import check_library
from pipeline.library.search import LibraryIndex
from retrieval import RetrievalConfig
from storage import Block, BlockVector, Chunk, Document, Page, StorageConfig, open_library

HERE = Path(__file__).resolve().parent
BM25_ONLY = RetrievalConfig(mode="bm25", fusion={"dense_weight": 0, "splade_weight": 0})


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for this module; `ray_faults` is importable in its workers."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},
    )
    yield ray
    ray.shutdown()


def _open(folder: Path, retrieval: RetrievalConfig) -> tuple:
    library = open_library(StorageConfig(library=folder))
    return library, LibraryIndex(library, retrieval, EncoderConfig())


def _ingest_both(files, tmp_path, retrieval, ray_config, on_progress=None, **ray_kwargs):
    """Ingest `files` into two fresh libraries, on Ray, then locally in the order Ray stored
    them; returns (results, library, index) of each, results in the order of `files`.

    NOTE: the same order, because an index depends on it a little: PRF breaks ties between
    expansion terms by their first appearance in the index (true of the local path with two
    parser processes too).
    """
    common = {"parse_config": ParseConfig(), "chunk_config": ChunkConfig(), "ingest_config": IngestConfig(workers=1)}
    events = []

    def record(event) -> None:
        events.append(event)
        if on_progress is not None:
            on_progress(event)

    ray_lib, ray_index = _open(tmp_path / "ray", retrieval)
    on_ray = ingest_on_ray(
        files, ray_lib, index=ray_index, retrieval_config=retrieval, encoder_config=EncoderConfig(),
        ray_config=ray_config, on_progress=record, **common, **ray_kwargs,
    )  # fmt: skip
    stored = [e.path for e in events if e.kind == "document"]
    local_lib, local_index = _open(tmp_path / "local", retrieval)
    by_path = {r.path: r for r in ingest(stored, local_lib, index=local_index, **common)}
    local = [by_path[path] for path in files]
    return (local, local_lib, local_index), (on_ray, ray_lib, ray_index)


def _row(obj, *names: str) -> tuple:
    return tuple(getattr(obj, n) for n in names)


def _snapshot(library) -> dict:
    """Everything stored, without the database's own block ids (chunks name blocks by place)."""
    with library.sessions() as s:
        place = {b.id: (b.doc_id, b.page, b.reading_order) for b in s.scalars(select(Block))}
        return {
            "documents": sorted(
                _row(d, "id", "file_name", "title", "page_count", "parser_version", "status", "error", "size_bytes")
                for d in s.scalars(select(Document))
            ),
            "pages": sorted(
                _row(p, "doc_id", "number", "width", "height", "rotation", "text", "has_text_layer", "ocr_used", "thumbnail")
                for p in s.scalars(select(Page))
            ),
            "blocks": sorted(
                _row(b, "doc_id", "page", "reading_order", "kind", "x0", "y0", "x1", "y1", "text", "asset", "caption_of")
                for b in s.scalars(select(Block))
            ),
            "chunks": sorted(
                (*_row(c, "id", "doc_id", "ordinal", "kind", "page_start", "page_end", "text", "token_count"),
                 tuple(place[i] for i in c.block_ids))
                for c in s.scalars(select(Chunk))
            ),  # fmt: skip
        }


def _block_vectors(library) -> dict[tuple, tuple]:
    """The stored block vectors by block place: (encoder, dim, text hash, vector)."""
    with library.sessions() as s:
        place = {b.id: (b.doc_id, b.page, b.reading_order) for b in s.scalars(select(Block))}
        return {
            place[v.block_id]: (v.encoder, v.dim, v.text_hash, np.frombuffer(v.vector, dtype="<f4"))
            for v in s.scalars(select(BlockVector))
        }


def _assets(library) -> dict[str, str]:
    # A folder's store stamp holds the version of its library's own rows (when they were
    # written): that it is there must match, not its value.
    return {
        str(p.relative_to(library.assets_dir)): (
            "stamped" if p.name == STORE_STAMP else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(library.assets_dir.rglob("*"))
        if p.is_file()
    }


def _hits(index: LibraryIndex, query: str, mode: str) -> list[tuple[str, float]]:
    return [(h.chunk_id, h.score) for h in index.search(query, k=8, mode=mode)]


def test_check_address() -> None:
    for good in ("local", "auto", "ray://head:10001", "10.0.0.5:6379", "head-node.example:6379"):
        assert check_address(good) == good
    for bad in ("paper.pdf", "questions.jsonl", "papers/", "ray:/x", ""):
        with pytest.raises(ValueError, match="not a Ray address"):
            check_address(bad)


def test_ray_ingest_stores_and_indexes_what_the_local_path_does(
    ray_local, tmp_path: Path, papers_dir: Path, robustness_dir: Path
) -> None:
    files = [
        papers_dir / "unstructured__multi-column_DPR.pdf",  # 13 pages, two columns, figures, tables
        robustness_dir / "docling__ocr_test_rotated_90.pdf",  # a scan turned 90 degrees: OCR
        robustness_dir / "pdfplumber__empty.pdf",  # 0 bytes: fails with its reason
    ]
    retrieval = RetrievalConfig()  # BM25 + MiniLM dense, as shipped
    events, timings = [], []
    (local, local_lib, local_index), (on_ray, ray_lib, ray_index) = _ingest_both(
        files, tmp_path, retrieval, ray_config=RayConfig(ingest_workers=2),
        on_progress=events.append, on_timing=timings.append,
    )  # fmt: skip

    assert [r.status for r in on_ray] == ["added", "added", "failed"]
    assert on_ray == local
    assert on_ray[2].error == "pdfplumber__empty.pdf: empty file (0 bytes)"
    stored = _snapshot(ray_lib)
    assert stored == _snapshot(local_lib)
    assert any(p[7] for p in stored["pages"]), "the scanned page was OCR'd on a Ray worker"
    assert _assets(ray_lib) == _assets(local_lib)
    # The workers embed the sampler's blocks too: the same rows, vectors equal to float noise.
    ray_vectors, local_vectors = _block_vectors(ray_lib), _block_vectors(local_lib)
    assert ray_vectors and ray_vectors.keys() == local_vectors.keys()
    for where, (*meta, vector) in ray_vectors.items():
        assert meta == list(local_vectors[where][:3])
        assert np.allclose(vector, local_vectors[where][3], atol=1e-5), where
    assert ray_index.part_chunk_ids() == local_index.part_chunk_ids()
    assert set(ray_index.part_chunk_ids()) == {"bm25", "dense"}
    for query in ("dense passage retrieval", "What does Table 1 compare?", "test document rotated"):
        for mode in ("bm25", "dense", "hybrid-prf"):
            ray_hits, local_hits = _hits(ray_index, query, mode), _hits(local_index, query, mode)
            assert [c for c, _ in ray_hits] == [c for c, _ in local_hits], (query, mode)
            assert [s for _, s in ray_hits] == pytest.approx([s for _, s in local_hits], rel=1e-6)

    # Progress as on the local path: every page of the parsed files, then one event per file.
    pages = {}
    for event in events:
        if event.kind == "page":
            pages[event.path.name] = event.pages_done
    assert pages == {files[0].name: 13, files[1].name: 1}
    assert sorted(e.path.name for e in events if e.kind == "document") == sorted(f.name for f in files)
    assert sorted((t.file_name, t.pages, t.chunks) for t in timings) == sorted(
        (r.path.name, r.pages, r.chunks) for r in on_ray if r.status == "added"
    )
    report = check_library(ray_lib, retrieval, EncoderConfig(), index=ray_index)
    assert report.ok, report.summary()

    again = ingest_on_ray(
        files[:2], ray_lib, parse_config=ParseConfig(), chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(), retrieval_config=retrieval, encoder_config=EncoderConfig(),
        ray_config=RayConfig(), index=ray_index,
    )  # fmt: skip
    assert [r.status for r in again] == ["unchanged", "unchanged"]
    local_lib.close()
    ray_lib.close()


def test_a_crashed_parser_or_dead_worker_fails_its_document_alone(
    ray_local, tmp_path: Path, papers_dir: Path
) -> None:
    good = papers_dir / "paperqa__pasa.pdf"
    inputs = tmp_path / "in"
    inputs.mkdir()
    crashing = shutil.copyfile(papers_dir / "papermage__papermage.pdf", inputs / "segfault-papermage.pdf")
    killing = shutil.copyfile(papers_dir / "unstructured__multi-column_DPR.pdf", inputs / "killworker-dpr.pdf")
    library, index = _open(tmp_path / "lib", BM25_ONLY)
    results = ingest_on_ray(
        [crashing, killing, good], library, parse_config=ParseConfig(ocr=OcrMode.NEVER),
        chunk_config=ChunkConfig(), ingest_config=IngestConfig(), retrieval_config=BM25_ONLY,
        encoder_config=EncoderConfig(), ray_config=RayConfig(ingest_workers=2), index=index,
        parse_task=__import__("ray_faults").parse_or_fault,
    )  # fmt: skip
    assert [r.status for r in results] == ["failed", "failed", "added"]
    # The same reason as a crash in a local parser process (pipeline.ingestion.ingest.parse_failure).
    assert results[0].error == (
        "segfault-papermage.pdf: the parser crashed (SIGSEGV); the file is probably damaged, try re-saving it"
    )
    assert results[1].error.startswith("killworker-dpr.pdf: the Ray worker ingesting it died (")
    assert "\n" not in results[1].error
    with library.sessions() as s:
        failed = {d.file_name: d.error for d in s.scalars(select(Document).where(Document.status == "failed"))}
    assert failed == {r.path.name: r.error for r in results[:2]}
    assert results[2].chunks > 0 and len(index.search("paper", k=3)) == 3
    assert not list(library.assets_dir.glob("*.partial"))
    library.close()


def test_ray_batch_answers_like_the_local_batch_in_order_and_resumes(
    ray_local, tmp_path: Path, papers_dir: Path, sample_pdf: Path, tiny_settings
) -> None:
    settings = tiny_settings(max_new_tokens=4)
    retrieval = RetrievalConfig(**settings["retrieval"])
    answer, generator = AnswerConfig(**settings["answer"]), GeneratorConfig(**settings["generator"])
    storage = StorageConfig(library=tmp_path / "lib")
    library = open_library(storage)
    index = LibraryIndex(library, retrieval, EncoderConfig())
    ingest(
        [papers_dir / "paperqa__pasa.pdf", sample_pdf], library,
        parse_config=ParseConfig(**settings["parse"]), chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(workers=1), index=index,
    )  # fmt: skip
    questions = [
        BatchQuestion("What does PaSa stand for?", id="q0"),
        BatchQuestion("Which dataset is used for evaluation?", ("paperqa__pasa.pdf",)),
        BatchQuestion("{not json", error="line 3: not JSON (Expecting property name)"),
        BatchQuestion("Which hash identifies a document?", ("folio-guide.pdf",), id="q3"),
        BatchQuestion("How many agents does the system use?"),
    ]
    answerer = Answerer(library, index, answer, generator, EncoderConfig())

    def ask(q: BatchQuestion):
        return answerer.ask(q.question, doc_ids=q.doc_ids, config=answer, generator_config=generator, id=q.id)

    local = run_batch(questions, ask)
    out = tmp_path / "answers.jsonl"
    on_ray_args = {
        "storage": storage, "retrieval": retrieval, "encoders": EncoderConfig(), "answer": answer,
        "generator": generator, "model_cache": None, "ray_config": RayConfig(answer_workers=2), "out": out,
    }  # fmt: skip
    on_ray = answer_batch_on_ray(questions, **on_ray_args)

    def same(a, b) -> bool:
        fields = ("question", "text", "citations", "error", "not_answerable", "doc_ids", "id")
        return all(getattr(a, f) == getattr(b, f) for f in fields)

    assert all(same(a, b) for a, b in zip(on_ray, local, strict=True))
    assert on_ray[2].error.startswith("line 3") and on_ray[0].id == "q0" and on_ray[3].id == "q3"
    assert sum(a.error is None for a in on_ray) == 4
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2, 3, 4]
    assert [x["question"] for x in lines] == [q.question for q in questions]

    # A killed run: two answers written, then a line cut short. The rerun answers only the rest.
    out.write_text("".join(json.dumps(x) + "\n" for x in lines[:2]) + '{"index": 3, "question": "Wh')
    seen = []
    on_ray_args["ray_config"] = RayConfig(answer_workers=1)
    resumed = answer_batch_on_ray(questions, **on_ray_args, on_progress=seen.append)
    assert [p.resumed for p in seen] == [True, True, False, False, False]
    assert [p.done for p in seen] == [1, 2, 3, 4, 5]
    assert all(same(a, b) for a, b in zip(resumed, local, strict=True))
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]

    # Another user's batch sees none of these (local-user) documents.
    on_ray_args["out"] = None
    theirs = answer_batch_on_ray(questions[:2], **on_ray_args, owner="mallory")
    assert theirs[0].not_answerable and not theirs[0].evidence
    assert "no document" in (theirs[1].error or "")
    library.close()


@pytest.mark.slow
def test_ray_ingest_of_scans_and_many_files_equals_local(
    ray_local, tmp_path: Path, papers_dir: Path, robustness_dir: Path
) -> None:
    files = sorted(papers_dir.glob("*.pdf")) + [
        robustness_dir / "pdfplumber__issue-203-decimalize_scanned.pdf",
        robustness_dir / "pypdf__password.pdf",
        robustness_dir / "pypdf__arabic_rotated.pdf",
    ]
    (local, local_lib, local_index), (on_ray, ray_lib, ray_index) = _ingest_both(
        files, tmp_path, RetrievalConfig(), ray_config=RayConfig(ingest_workers=2)
    )
    assert on_ray == local
    assert _snapshot(ray_lib) == _snapshot(local_lib)
    assert _assets(ray_lib) == _assets(local_lib)
    for mode in ("bm25", "dense", "hybrid-prf"):
        assert [c for c, _ in _hits(ray_index, "document layout analysis", mode)] == [
            c for c, _ in _hits(local_index, "document layout analysis", mode)
        ]
    local_lib.close()
    ray_lib.close()
