import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pipeline.config import ChunkConfig, IngestConfig, OcrMode, ParseConfig
from pipeline.ingestion import ingest as ingest_module
from pipeline.ingestion.ingest import delete_document, find_pdfs, ingest
from pipeline.ingestion.parse import PARSER_VERSION, parser_version
from pipeline.library.documents import list_documents
from storage import Block, Chunk, Document, Page, StorageConfig, document_version, open_library

PARSE = ParseConfig(ocr=OcrMode.NEVER)


class RecordingIndex:
    def __init__(self) -> None:
        self.items: dict[str, str] = {}
        self.flushes = 0

    def add(self, chunks):
        self.items.update(dict(chunks))

    def remove(self, chunk_ids):
        for cid in chunk_ids:
            self.items.pop(cid, None)

    def flush(self):
        self.flushes += 1


def _run(paths, library, index=None, parse_config=None, **kwargs):
    return ingest(
        paths, library, parse_config=parse_config or PARSE, chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(workers=1), index=index, **kwargs,
    )


def _counts(library) -> tuple[int, int, int, int]:
    with library.sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Document, Page, Block, Chunk))


@pytest.fixture
def library(tmp_path: Path):
    lib = open_library(StorageConfig(library=tmp_path / "lib"))
    yield lib
    lib.close()


def test_ingest_is_idempotent_and_reindex_rebuilds(library, sample_pdf: Path) -> None:
    index = RecordingIndex()
    (first,) = _run([sample_pdf], library, index)
    assert first.status == "added" and first.pages == 2 and first.chunks > 3
    counts = _counts(library)
    (again,) = _run([sample_pdf], library, index)
    assert again.status == "unchanged" and _counts(library) == counts
    (re,) = _run([sample_pdf], library, index, reindex=True)
    assert re.status == "added" and _counts(library) == counts
    with library.sessions() as s:
        chunk_ids = set(s.scalars(select(Chunk.id)))
        doc = s.get(Document, first.doc_id)
        thumbs = [p.thumbnail for p in doc.pages]
    assert set(index.items) == chunk_ids
    assert all(library.asset_path(t).is_file() for t in thumbs)
    assert (library.assets_dir / first.doc_id / "source.pdf").is_file()


def test_a_changed_parse_setting_parses_stored_documents_again(library, sample_pdf: Path) -> None:
    (first,) = _run([sample_pdf], library)
    spans = PARSE.model_copy(update={"tables": "spans", "figure_ocr": "off"})
    longest = PARSE.model_copy(
        update={"parser": "layout", "tables": "spans", "table_finder": True,
                "figure_ocr": "tesseract", "layout_detector": False}
    )  # fmt: skip
    assert parser_version(PARSE) == f"{PARSER_VERSION}+fast"  # defaults: libraries keep theirs
    assert parser_version(spans) == f"{PARSER_VERSION}+fast+tab:spans+fig:off"
    assert len(parser_version(longest)) <= 64  # Document.parser_version's column
    (changed,) = _run([sample_pdf], library, parse_config=spans)
    (again,) = _run([sample_pdf], library, parse_config=spans)
    assert (first.status, changed.status, again.status) == ("added", "added", "unchanged")
    with library.sessions() as s:
        assert s.get(Document, first.doc_id).parser_version == parser_version(spans)


def test_chunks_cite_blocks_of_their_page(library, sample_pdf: Path) -> None:
    _run([sample_pdf], library)
    with library.sessions() as s:
        for chunk in s.scalars(select(Chunk)):
            blocks = [s.get(Block, b) for b in chunk.block_ids]
            assert blocks and all(b.page == chunk.page_start for b in blocks)
            assert all(b.doc_id == chunk.doc_id for b in blocks)


def test_bad_files_are_recorded_and_never_stop_the_batch(library, sample_pdf: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"%PDF-1.4 garbage garbage")
    results = _run([empty, sample_pdf, junk], library)
    assert [r.status for r in results] == ["failed", "added", "failed"]
    assert results[0].error == "empty.pdf: empty file (0 bytes)"
    assert results[2].error.startswith("junk.pdf: ")
    docs = {d.file_name: d for d in list_documents(library)}
    assert docs["empty.pdf"].status == "failed" and "empty file" in docs["empty.pdf"].error
    assert docs["folio-guide.pdf"].status == "ok"


def test_a_crash_while_storing_leaves_nothing_half_written(library, sample_pdf: Path, monkeypatch) -> None:
    def explode(*_args, **_kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the transaction

    monkeypatch.setattr(ingest_module, "chunk_blocks", explode)
    with pytest.raises(KeyboardInterrupt):
        _run([sample_pdf], library)
    assert _counts(library) == (0, 0, 0, 0)
    monkeypatch.undo()
    (result,) = _run([sample_pdf], library)
    assert result.status == "added" and _counts(library)[0] == 1


def test_a_reindex_that_fails_at_the_image_move_keeps_the_old_images(library, sample_pdf: Path, monkeypatch) -> None:
    (first,) = _run([sample_pdf], library)
    with library.sessions() as s:
        thumbs = [p.thumbnail for p in s.get(Document, first.doc_id).pages]
    counts = _counts(library)
    real_rename = Path.rename

    def rename(self: Path, target):  # noqa: ANN001, ANN202
        if self.name.endswith(".partial"):
            raise KeyboardInterrupt  # Ctrl-C after the old images were set aside
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _run([sample_pdf], library, reindex=True)
    monkeypatch.undo()
    # The rows were rolled back and the old images are back where they point.
    assert _counts(library) == counts
    assert all(library.asset_path(t).is_file() for t in thumbs)
    assert not (library.assets_dir / f"{first.doc_id}{ingest_module.RETIRED_SUFFIX}").exists()
    (again,) = _run([sample_pdf], library, reindex=True)
    assert again.status == "added" and all(library.asset_path(t).is_file() for t in thumbs)
    assert sorted(p.name for p in library.assets_dir.iterdir()) == [first.doc_id]


def _reindex_killed_after_the_image_renames(library_dir: Path, pdf: Path) -> None:
    """In a child process: `--reindex` killed (no handler runs) right after the new images
    moved into place, before the commit."""
    import os

    real_rename = Path.rename

    def rename(self: Path, target):  # noqa: ANN001, ANN202
        done = real_rename(self, target)
        if self.name.endswith(".partial"):
            os._exit(9)
        return done

    Path.rename = rename
    _run([pdf], open_library(StorageConfig(library=library_dir)), reindex=True)
    os._exit(0)  # not reached when the kill lands


def test_a_reindex_killed_after_both_renames_gets_its_old_images_back(
    library, sample_pdf: Path, tmp_path: Path
) -> None:
    import multiprocessing

    (first,) = _run([sample_pdf], library)
    folder = library.assets_dir / first.doc_id
    stamp = folder / ingest_module.STORE_STAMP
    with library.sessions() as s:
        version = document_version(s.get(Document, first.doc_id).created)
        thumbs = [p.thumbnail for p in s.get(Document, first.doc_id).pages]
    assert stamp.read_text() == version  # the folder names the rows it was stored with
    counts = _counts(library)

    child = multiprocessing.get_context("fork").Process(
        target=_reindex_killed_after_the_image_renames, args=(tmp_path / "lib", sample_pdf)
    )
    child.start()
    child.join(120)
    assert child.exitcode == 9
    # The old rows (never replaced), the new images in place, the old ones aside.
    assert _counts(library) == counts
    retired = library.assets_dir / f"{first.doc_id}{ingest_module.RETIRED_SUFFIX}"
    assert retired.is_dir() and stamp.read_text() != version

    assert ingest_module.restore_retired_assets(library, repair=False) == [first.doc_id]
    assert ingest_module.restore_retired_assets(library) == [first.doc_id]
    assert stamp.read_text() == version and not retired.exists()
    assert all(library.asset_path(t).is_file() for t in thumbs)
    assert ingest_module.restore_retired_assets(library) == []  # nothing left to do

    # After a committed store, `<doc>.old` is only a leftover: its stamp is the old version.
    _run([sample_pdf], library, reindex=True)
    shutil.copytree(folder, retired)
    (retired / ingest_module.STORE_STAMP).write_text(version)
    assert ingest_module.restore_retired_assets(library) == []
    assert ingest_module.leftover_assets(library) == [retired]


def test_delete_removes_rows_index_items_and_images(library, sample_pdf: Path) -> None:
    index = RecordingIndex()
    (result,) = _run([sample_pdf], library, index)
    removed = delete_document(library, result.doc_id[:10], index)
    assert removed.id == result.doc_id
    assert _counts(library) == (0, 0, 0, 0) and index.items == {}
    assert not (library.assets_dir / result.doc_id).exists()
    with pytest.raises(LookupError, match="no document"):
        delete_document(library, "ffff")


def test_find_pdfs(tmp_path: Path, sample_pdf: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(sample_pdf, tmp_path / "a" / "one.pdf")
    shutil.copy(sample_pdf, tmp_path / "a" / "b" / "two.PDF")
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert [p.name for p in find_pdfs([tmp_path / "a"])] == ["one.pdf"]
    assert sorted(p.name for p in find_pdfs([tmp_path / "a"], recursive=True)) == ["one.pdf", "two.PDF"]
    with pytest.raises(FileNotFoundError, match="missing.pdf"):
        find_pdfs([tmp_path / "missing.pdf"])


def test_robustness_set_outcomes(library, robustness_dir: Path) -> None:
    names = [
        "pdfplumber__empty.pdf",
        "pdfplumber__malformed-from-issue-932.pdf",
        "pdfplumber__password-example.pdf",
        "pypdf__password.pdf",
        "pypdf__unreadablemetadata.pdf",
        "docling__invisible_text_layer.pdf",
        "pypdf__arabic_rotated.pdf",
    ]
    results = {r.path.name: r for r in _run([robustness_dir / n for n in names], library)}
    assert {n for n, r in results.items() if r.status == "failed"} == {
        "pdfplumber__empty.pdf",
        "pdfplumber__password-example.pdf",
        "pypdf__password.pdf",
        "pypdf__unreadablemetadata.pdf",
    }
    (unlocked,) = _run([robustness_dir / "pypdf__password.pdf"], library, password="openpassword")
    assert unlocked.status == "added"


@pytest.mark.slow
def test_every_robustness_file_gets_its_outcome(library, robustness_dir: Path) -> None:
    expected_failures = {
        "pdfplumber__empty.pdf": "empty file",
        "pdfplumber__password-example.pdf": "encrypted",
        "pypdf__password.pdf": "encrypted",
        "pypdf__unreadablemetadata.pdf": "no pages",
    }
    files = sorted(robustness_dir.glob("*.pdf"))
    results = {r.path.name: r for r in ingest(
        files, library, parse_config=ParseConfig(), chunk_config=ChunkConfig(), ingest_config=IngestConfig(workers=2)
    )}
    assert len(results) == len(files) == 12
    for name, result in results.items():
        if name in expected_failures:
            assert result.status == "failed" and expected_failures[name] in result.error, name
        else:
            assert result.status == "added" and result.chunks > 0, name
    assert results["unstructured__DA-619p.pdf"].pages == 619
    assert results["pypdf__GeoTopo_117pp_CC-BY-SA.pdf"].pages == 117
    with library.sessions() as s:
        scanned = s.scalars(select(Page).where(Page.ocr_used)).all()
    assert len(scanned) >= 13  # 8 image-only pages, 3 scanned, 1 rotated scan, 1 malformed


def _raise(exc: Exception):  # noqa: ANN202
    def parse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise exc

    return parse


def test_a_cpp_allocation_failure_is_running_out_of_memory(tmp_path: Path, sample_pdf: Path, monkeypatch) -> None:
    """onnxruntime (figure OCR) fails with std::bad_alloc at the worker's address-space limit,
    wrapped by RapidOCR in a whole traceback: the pool must see a MemoryError (the message then
    names the limit and the setting, and the spent worker is replaced), not a parser error."""
    wrapped = (
        "Traceback (most recent call last):\n  File \"infer_engine.py\", line 196, in __call__\n"
        "onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException: [ONNXRuntimeError] : 6 : "
        "RUNTIME_EXCEPTION : Non-zero status code returned while running Clip node. Status Message: std::bad_alloc"
    )
    args = (str(sample_pdf), "doc", ParseConfig(), str(tmp_path / "assets"), "assets/doc", None)
    monkeypatch.setattr(ingest_module, "parse_pdf", _raise(RuntimeError(wrapped)))
    with pytest.raises(MemoryError):
        ingest_module.parse_in_worker(*args)

    other = wrapped.replace("std::bad_alloc", "shape mismatch")
    monkeypatch.setattr(ingest_module, "parse_pdf", _raise(RuntimeError(other)))
    assert ingest_module.parse_in_worker(*args) == (
        f"{sample_pdf.name}: unexpected parser error (RuntimeError: onnxruntime.capi.onnxruntime_pybind11_state."
        "RuntimeException: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
        "running Clip node. Status Message: shape mismatch)"
    )
    monkeypatch.setattr(ingest_module, "parse_pdf", _raise(ValueError("bad value\nsecond line")))
    assert ingest_module.parse_in_worker(*args) == f"{sample_pdf.name}: unexpected parser error (ValueError: bad value)"
