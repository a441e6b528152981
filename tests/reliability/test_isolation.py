"""Parser isolation: a PDF that crashes, hangs or exhausts its parser fails alone, with a reason."""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

import psutil
import pytest
from isolation_faults import faulty_task, parse_or_fault
from sqlalchemy import select

from pipeline.config import ChunkConfig, IngestConfig, OcrMode, ParseConfig
from pipeline.ingestion import ingest as ingest_module
from pipeline.ingestion.ingest import ingest
from pipeline.ingestion.isolation import TaskStatus, WorkerPool
from pipeline.ingestion.sample import write_sample_pdf
from pipeline.library.documents import list_documents
from pipeline.reliability.fuzz import repeated_flate
from storage import Page, StorageConfig, open_library

PARSE = ParseConfig(ocr=OcrMode.NEVER)
# Small limits so the faults trip them quickly; a 2-page PDF needs a second and a few MB.
LIMITS = IngestConfig(workers=2, parse_timeout_s=20, parse_memory_mb=512)


@pytest.fixture(scope="module")
def sample_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_pdf(tmp_path_factory.mktemp("sample") / "folio-guide.pdf")


@pytest.fixture
def library(tmp_path: Path):
    lib = open_library(StorageConfig(library=tmp_path / "lib"))
    yield lib
    lib.close()


def _variant(sample_pdf: Path, folder: Path, name: str) -> Path:
    """A copy of the sample PDF with different bytes (so a different document id)."""
    path = folder / name
    path.write_bytes(sample_pdf.read_bytes() + f"\n% {name}\n".encode())
    return path


# ------------------------------------------------------------------------------ the pool itself


def test_pool_runs_tasks_and_relays_events() -> None:
    events = []
    with WorkerPool(faulty_task, workers=2, timeout_s=60, memory_mb=256, on_event=events.append) as pool:
        outcomes = {o.key: o for o in pool.run([(n, ("ok", n)) for n in range(6)])}
        again = list(pool.run([("last", ("ok", 7))]))  # workers are reused across runs
    assert {k: (o.status, o.value) for k, o in outcomes.items()} == {n: ("ok", n * n) for n in range(6)}
    assert again[0].value == 49 and pool.restarts == 0
    assert sorted(e[2] for e in events) == [0, 1, 2, 3, 4, 5, 7]


@pytest.mark.parametrize(
    ("kind", "status", "detail"),
    [
        ("segfault", TaskStatus.CRASH, "SIGSEGV"),
        ("abort", TaskStatus.CRASH, "SIGABRT"),
        ("exit", TaskStatus.CRASH, "exit status 3"),
        ("hang", TaskStatus.TIMEOUT, "over 3 s"),
        ("hog", TaskStatus.MEMORY, ""),
        ("raise", TaskStatus.ERROR, "ValueError: bad value second line"),
    ],
)
def test_a_failing_task_fails_alone_and_its_worker_is_replaced(kind: str, status: TaskStatus, detail: str) -> None:
    tasks = [("a", ("ok", 2)), ("bad", (kind,)), ("b", ("ok", 3)), ("c", ("ok", 4))]
    with WorkerPool(faulty_task, workers=1, timeout_s=3, memory_mb=256) as pool:
        outcomes = {o.key: o for o in pool.run(tasks)}
    assert (outcomes["bad"].status, outcomes["bad"].detail) == (status, detail)
    assert [outcomes[k].value for k in "abc"] == [4, 9, 16]
    assert pool.restarts == (0 if kind == "raise" else 1)


def test_the_memory_limit_is_on_top_of_the_workers_own_address_space() -> None:
    with WorkerPool(faulty_task, workers=1, timeout_s=60, memory_mb=64) as pool:
        # A worker that imported numpy, torch and pymupdf uses far more than 64 MB of address
        # space; it still starts and runs small tasks.
        (outcome,) = pool.run([("x", ("ok", 5))])
    assert outcome.value == 25


def test_closing_the_results_early_kills_the_busy_workers() -> None:
    pool = WorkerPool(faulty_task, workers=3, timeout_s=None, memory_mb=None)
    results = pool.run([("hang1", ("hang",)), ("hang2", ("hang",)), ("quick", ("ok", 1))])
    pids = []
    for outcome in results:
        assert outcome.key == "quick"
        pids = [w.process.pid for w in pool._pool if w.busy]
        break
    results.close()
    assert len(pids) == 2 and not any(psutil.pid_exists(pid) for pid in pids)
    pool.close()


# ------------------------------------------------------------------------ through ingest()


def test_crashing_hanging_and_hungry_pdfs_fail_alone(
    library, sample_pdf: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(ingest_module, "parse_in_worker", parse_or_fault)
    names = ["good-1.pdf", "segfault-x.pdf", "hang-x.pdf", "good-2.pdf", "hog-x.pdf", "abort-x.pdf", "good-3.pdf"]
    paths = [_variant(sample_pdf, tmp_path, n) for n in names]
    pages = []
    limit_before = resource.getrlimit(resource.RLIMIT_AS)
    results = ingest(
        paths, library, parse_config=PARSE, chunk_config=ChunkConfig(), ingest_config=LIMITS,
        on_progress=lambda e: pages.append(e.path.name) if e.kind == "page" else None,
    )
    by_name = {r.path.name: r for r in results}
    assert [r.path.name for r in results] == names  # in order, whatever finished first
    for good in ("good-1.pdf", "good-2.pdf", "good-3.pdf"):
        assert by_name[good].status == "added" and by_name[good].chunks > 0
        assert pages.count(good) == 2  # page events still reach this process
    assert by_name["segfault-x.pdf"].error == (
        "segfault-x.pdf: the parser crashed (SIGSEGV); the file is probably damaged, try re-saving it"
    )
    assert by_name["abort-x.pdf"].error.startswith("abort-x.pdf: the parser crashed (SIGABRT)")
    assert by_name["hang-x.pdf"].error == (
        "hang-x.pdf: parsing took longer than 20 s; raise FOLIO_INGEST__PARSE_TIMEOUT_S or split the file"
    )
    assert by_name["hog-x.pdf"].error == (
        "hog-x.pdf: parsing ran out of memory (limit 512 MB); raise FOLIO_INGEST__PARSE_MEMORY_MB or split the file"
    )
    docs = {d.file_name: d for d in list_documents(library)}
    for bad in ("segfault-x.pdf", "hang-x.pdf", "hog-x.pdf", "abort-x.pdf"):
        assert by_name[bad].status == "failed" and "\n" not in by_name[bad].error
        assert docs[bad].status == "failed" and docs[bad].error == by_name[bad].error
    assert not list(library.assets_dir.glob("*.partial"))
    assert resource.getrlimit(resource.RLIMIT_AS) == limit_before  # limits apply to workers only


def _image_bomb(path: Path, side: int) -> Path:
    """A 1-page PDF with a line of text and a `side` x `side` gray image of zeros (Flate, ~1000:1)."""
    pixels = repeated_flate(bytes(1 << 20), side * side >> 20)
    content = b"BT /F1 11 Tf 72 720 Td (A page with a decompression bomb for an image.) Tj ET\n"
    content += b"q 400 0 0 400 100 200 cm /Im0 Do Q\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << "
        b"/Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> /XObject << /Im0 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream"
        % (side, side, len(pixels), pixels),
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(out)
    return path


def test_a_decompression_bomb_is_refused_or_parsed_within_the_limits(
    library, sample_pdf: Path, tmp_path: Path
) -> None:
    bomb = _image_bomb(tmp_path / "bomb.pdf", side=40_000)  # 1.6 GB of pixels in ~1.6 MB
    assert bomb.stat().st_size < 4 << 20
    good = _variant(sample_pdf, tmp_path, "good.pdf")
    results = ingest(
        [bomb, good], library, parse_config=ParseConfig(ocr=OcrMode.AUTO), chunk_config=ChunkConfig(),
        ingest_config=LIMITS,
    )
    assert results[1].status == "added"
    outcome = results[0]
    if outcome.status == "failed":
        assert outcome.error.startswith("bomb.pdf: ") and "\n" not in outcome.error
    else:
        assert outcome.status == "added" and outcome.pages == 1


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")
def test_ocr_works_under_the_default_limits(library, robustness_dir: Path) -> None:
    """Tesseract runs inside MuPDF and as a subprocess (orientation), under the worker's limit."""
    scan = robustness_dir / "docling__ocr_test_rotated_90.pdf"
    (result,) = ingest(
        [scan], library, parse_config=ParseConfig(ocr=OcrMode.AUTO), chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(workers=1),
    )
    assert result.status == "added"
    with library.sessions() as s:
        (page,) = s.scalars(select(Page).where(Page.doc_id == result.doc_id)).all()
    # Read only once turned upright, which the tesseract subprocess decides.
    assert page.ocr_used and "Docling bundles PDF document conversion" in page.text

