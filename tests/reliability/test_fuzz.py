"""Fuzzing the parser: the mutators, a fixed-seed sample of bench.fuzz, and the bugs it found.

The nightly-sized run is `python -m bench.fuzz --cases 10000 --seed 0`; this is a small sample of
the same cases, through the same isolated parse path that ingestion uses.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from pipeline.config import ChunkConfig, IngestConfig, OcrMode, ParseConfig
from pipeline.ingestion.ingest import ingest
from pipeline.ingestion.parse import ParseError, parse_pdf
from pipeline.ingestion.sample import write_sample_pdf
from pipeline.reliability.fuzz import (
    STRATEGIES,
    append_update,
    make_case,
    prepare_seeds,
    repeated_flate,
    run,
)
from storage import Page, StorageConfig, open_library

NO_OCR = ParseConfig(ocr=OcrMode.NEVER)


@pytest.fixture(scope="module")
def sample_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_sample_pdf(tmp_path_factory.mktemp("sample") / "folio-guide.pdf").read_bytes()


# ----------------------------------------------------------------------------- the mutators


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategy=st.sampled_from(sorted(STRATEGIES)),
    seed=st.integers(0, 2**32),
    data=st.one_of(st.binary(max_size=2048), st.just(b""), st.just(b"%PDF-1.7\n%%EOF\n")),
)
def test_mutators_are_deterministic_and_take_any_bytes(strategy: str, seed: int, data: bytes) -> None:
    mutate = STRATEGIES[strategy]
    first = mutate(data, random.Random(seed))
    assert isinstance(first, bytes)
    assert mutate(data, random.Random(seed)) == first


def test_cases_are_reproducible_from_the_seed_and_number(shared_data: Path) -> None:
    seeds = prepare_seeds(shared_data)
    assert {s.name for s in seeds} >= {"unstructured__DA-619p.pdf", "paperqa__pasa.pdf"}
    cases = [make_case(n, 7, seeds, 0.5) for n in range(len(STRATEGIES) * 2)]
    again = [make_case(n, 7, seeds, 0.5) for n in range(len(STRATEGIES) * 2)]
    assert [(c.strategy, c.seed, c.variant, c.ocr, c.data) for c in cases] == [
        (c.strategy, c.seed, c.variant, c.ocr, c.data) for c in again
    ]
    assert sorted({c.strategy for c in cases}) == sorted(STRATEGIES)  # round robin


# ------------------------------------------------------------------------ the fixed sample


def test_a_fixed_seed_sample_keeps_every_failure_in_its_worker_with_a_reason(shared_data: Path) -> None:
    report = run(40, seed=0, timeout_s=20, data_dir=shared_data)
    total = report["total"]
    assert total["cases"] == 40
    assert all(t["cases"] == 5 for t in report["strategies"].values())
    assert total["main_problems"] == 0, report["notable"]
    assert total["bad_reasons"] == 0, report["notable"]
    assert total["unexpected"] == 0, report["notable"]  # every failure is one Folio explains
    assert total["task_errors"] == 0, report["notable"]
    assert total["parsed"] + total["failed"] + total["timeouts"] + total["crashes"] + total["memory"] == 40


# --------------------------------------------------------------- bugs the fuzzer found, fixed


def test_a_page_tree_with_a_negative_count_is_a_parse_error(tmp_path: Path, sample_bytes: bytes) -> None:
    """Found by huge_page_count: MuPDF raised RuntimeError("Invalid number of pages") from
    doc.page_count, outside every handler: "unexpected parser error (RuntimeError: code=7: ...)"."""
    path = tmp_path / "count.pdf"
    path.write_bytes(re.sub(rb"/Count \d+", b"/Count -1", sample_bytes))
    with pytest.raises(ParseError) as caught:
        parse_pdf(path, NO_OCR)
    assert str(caught.value).startswith("count.pdf: damaged page tree that MuPDF cannot read (")


def test_a_reason_names_the_file_without_its_folder(tmp_path: Path) -> None:
    """Found by number_extremes: MuPDF's message carried the full path of the upload
    ("Failed to open file '/srv/.../x.pdf' as type pdf.") into the reason stored and shown."""
    path = tmp_path / "junk.pdf"
    path.write_bytes(b"%PDF-1.4 garbage garbage")
    with pytest.raises(ParseError) as caught:
        parse_pdf(path, NO_OCR)
    assert str(caught.value).startswith("junk.pdf: malformed PDF")
    assert str(tmp_path) not in str(caught.value)


def test_mupdf_running_out_of_memory_is_reported_as_memory(tmp_path: Path) -> None:
    """MuPDF reports a failed allocation as FzErrorSystem("malloc ... failed"), not MemoryError
    and not a RuntimeError: it escaped as an "unexpected parser error". A page of 200 x 200 inches
    with a full-page figure needs a 1 GB crop; under a 256 MB limit that is out of memory."""
    content = b"q 12000 0 0 12000 100 200 cm /Im0 Do Q"
    pixels = bytes(100 * 100)
    data = append_update(b"%PDF-1.7\n", {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] /Contents 4 0 R "
           b"/Resources << /XObject << /Im0 5 0 R >> >> >>",
        4: b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        5: b"<< /Type /XObject /Subtype /Image /Width 100 /Height 100 /ColorSpace /DeviceGray "
           b"/BitsPerComponent 8 /Length %d >>\nstream\n%s\nendstream" % (len(pixels), pixels),
    }, root=1)
    path = tmp_path / "poster.pdf"
    path.write_bytes(data)
    library = open_library(StorageConfig(library=tmp_path / "lib"))
    try:
        (result,) = ingest(
            [path], library, parse_config=NO_OCR, chunk_config=ChunkConfig(),
            ingest_config=IngestConfig(workers=1, parse_memory_mb=256),
        )
    finally:
        library.close()
    assert result.status == "failed"
    assert result.error == (
        "poster.pdf: parsing ran out of memory (limit 256 MB); raise FOLIO_INGEST__PARSE_MEMORY_MB or split the file"
    )


def test_a_page_of_a_million_lines_keeps_its_text_within_the_limits(tmp_path: Path) -> None:
    """Found by decompression_bomb: a 16 MB content stream of lines (1.2 million paths) made
    get_cdrawings build a dict per path, over 1.7 GB, three times a page: the worker ran out of
    memory, crashed (SIGSEGV) or raised SystemError ("unexpected parser error"). Here 4 MB
    (300,000 paths, 434 MB in get_cdrawings) under a 256 MB limit: the text is still read."""
    lines = repeated_flate((b"0 0 m 9 9 l S\n" * 80_000)[: 1 << 20], 4)
    text = b"BT /F1 12 Tf 72 720 Td (A page drawn with a great many lines.) Tj ET\n"
    data = append_update(b"%PDF-1.7\n", {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents [4 0 R 5 0 R] /Resources "
           b"<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>",
        4: b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
        5: b"<< /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream" % (len(lines), lines),
    }, root=1)
    path = tmp_path / "lines.pdf"
    path.write_bytes(data)
    library = open_library(StorageConfig(library=tmp_path / "lib"))
    try:
        (result,) = ingest(
            [path], library, parse_config=NO_OCR, chunk_config=ChunkConfig(),
            ingest_config=IngestConfig(workers=1, parse_memory_mb=256),
        )
        assert result.status == "added", result.error
        with library.sessions() as s:
            (page,) = s.scalars(select(Page).where(Page.doc_id == result.doc_id)).all()
            assert "A page drawn with a great many lines." in page.text
    finally:
        library.close()
