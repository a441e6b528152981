"""Page images for the evidence viewer: the library's copy of the PDF rendered with the cited
regions drawn where the stored boxes say, and the thumbnail when no copy is kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.config import ChunkConfig, IngestConfig, ParseConfig
from pipeline.ingestion.ingest import ingest
from pipeline.library.documents import StorageConfig, open_library
from pipeline.library.viewer import draw_highlights, figure_assets, render_page, source_pdf
from storage import Block

OUTLINE = (230, 81, 0)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_pdf: Path):
    root = tmp_path_factory.mktemp("viewer") / "lib"
    lib = open_library(StorageConfig(library=root))
    (result,) = ingest(
        [sample_pdf],
        lib,
        parse_config=ParseConfig(ocr="never"),
        chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(workers=1),
    )
    assert result.status == "added"
    yield lib, result.doc_id
    lib.close()


def _blocks(lib, doc_id: str) -> list[Block]:
    with lib.sessions() as session:
        return list(session.scalars(select(Block).where(Block.doc_id == doc_id).order_by(Block.page, Block.reading_order)))


def _is_outline(pixel) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(pixel[:3], OUTLINE, strict=True))


def test_the_library_keeps_the_pdf_and_renders_the_cited_box_in_place(library) -> None:
    lib, doc_id = library
    assert source_pdf(lib, doc_id) is not None
    block = next(b for b in _blocks(lib, doc_id) if b.kind == "text" and b.page == 1)
    view = render_page(lib, doc_id, 1, [block.bbox], dpi=72)
    assert (view.source, view.page, view.page_count, view.scale) == ("pdf", 1, view.page_count, 1.0)
    assert view.file_name == "folio-guide.pdf" and view.page_count >= 2
    x0, y0, x1, y1 = block.bbox
    # The outline runs 2 points outside the box; the middle of the box is tinted, not outlined.
    left_edge = view.image.getpixel((round(x0 - 2), round((y0 + y1) / 2)))
    middle = view.image.getpixel((round((x0 + x1) / 2), round((y0 + y1) / 2)))
    assert _is_outline(left_edge) and not _is_outline(middle)
    plain = render_page(lib, doc_id, 1, [], dpi=72)
    assert plain.image.size == view.image.size
    assert not any(_is_outline(plain.image.getpixel((x, round((y0 + y1) / 2)))) for x in range(plain.image.width))


def test_render_page_refuses_unknown_documents_and_pages(library) -> None:
    lib, doc_id = library
    with pytest.raises(LookupError, match="no page 99"):
        render_page(lib, doc_id, 99)
    with pytest.raises(LookupError, match="no document"):
        render_page(lib, "0" * 64, 1)


def test_without_the_pdf_the_thumbnail_stands_in(library, tmp_path: Path) -> None:
    lib, doc_id = library
    source = source_pdf(lib, doc_id)
    kept = tmp_path / "source.pdf"
    shutil.move(source, kept)
    try:
        view = render_page(lib, doc_id, 1, [(72.0, 72.0, 200.0, 100.0)])
        assert view.source == "thumbnail" and view.scale < 1.0
    finally:
        shutil.move(kept, source)


def test_figure_assets_finds_stored_figure_images(library) -> None:
    lib, doc_id = library
    blocks = _blocks(lib, doc_id)
    figures = [b.id for b in blocks if b.asset]
    assert figures, "the sample guide has a figure"
    found = figure_assets(lib, [b.id for b in blocks])
    assert set(found) == set(figures) and all(p.is_file() for p in found.values())
    assert figure_assets(lib, []) == {}


def test_draw_highlights_scales_boxes_and_ignores_empty_ones() -> None:
    from PIL import Image

    page = Image.new("RGB", (200, 100), "white")
    out = draw_highlights(page, [(10, 10, 20, 20), (50, 50, 50, 50)], scale=2.0)
    assert _is_outline(out.getpixel((16, 30))) and out.getpixel((150, 90)) == (255, 255, 255)
    assert page.getpixel((16, 30)) == (255, 255, 255)  # the input is left alone
