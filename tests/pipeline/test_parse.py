from pathlib import Path

import pymupdf
import pytest

from pipeline.config import OcrMode, ParseConfig
from pipeline.ingestion.parse import ParseError, parse_pdf, reading_order_of, tesseract_available

FAST = ParseConfig(ocr=OcrMode.NEVER)


def _texts(page) -> list[str]:
    return [b.text for b in page.blocks]


def test_sample_guide_two_columns_headings_figure_and_table(sample_pdf: Path, tmp_path: Path) -> None:
    doc = parse_pdf(sample_pdf, FAST, asset_dir=tmp_path, asset_prefix="assets/x")
    assert doc.page_count == 2 and doc.title.startswith("Folio: A Guide")
    first = doc.pages[0]
    headings = [b.text for b in first.blocks if b.kind == "heading"]
    assert headings[1:] == [
        "1 What Folio does",
        "2 How a question is answered",
        "3 Ingesting documents",
        "4 Performance on a laptop",
    ]
    texts = _texts(first)
    # Left column is read before the right one.
    left = next(i for i, t in enumerate(texts) if t.startswith("The command folio ingest"))
    right = next(i for i, t in enumerate(texts) if t.startswith("Each document is stored"))
    assert left < right
    second = doc.pages[1]
    kinds = {b.kind for b in second.blocks}
    assert {"figure", "table", "caption"} <= kinds
    figure = next(b for b in second.blocks if b.kind == "figure")
    table = next(b for b in second.blocks if b.kind == "table")
    captions = {b.caption_of: b.text for b in second.blocks if b.kind == "caption"}
    assert captions[figure.reading_order].startswith("Figure 1:")
    assert captions[table.reading_order].startswith("Table 1:")
    # Text drawn inside the figure belongs to it; the table is Markdown.
    assert "Retrieve" in figure.text and "Generate" in figure.text
    assert "| Chunk size | 160 | tokens |" in table.text
    assert figure.asset == f"assets/x/p0002-figure{figure.reading_order:03d}.png"
    assert (tmp_path / Path(figure.asset).name).is_file()
    assert (tmp_path / "p0001.png").is_file() and first.thumbnail == "assets/x/p0001.png"
    assert not any(t in ("Retrieve", "Sample") for t in _texts(second) if t)


def test_bboxes_are_in_displayed_page_space_on_rotated_pages(tmp_path: Path) -> None:
    path = tmp_path / "rotated.pdf"
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=600)
    page.insert_text((50, 100), "Rotated page text", fontsize=12)
    page.set_rotation(90)
    doc.save(path)
    parsed = parse_pdf(path, FAST)
    p = parsed.pages[0]
    assert (p.width, p.height, p.rotation) == (600, 400, 90)
    (block,) = p.blocks
    x0, y0, x1, y1 = block.bbox
    assert 0 <= x0 < x1 <= 600 and 0 <= y0 < y1 <= 400
    # In the displayed page the line runs top to bottom near the right edge.
    assert y1 - y0 > x1 - x0 and x0 > 400


def test_reading_order_of_a_two_column_band_layout() -> None:
    W = 600.0
    boxes = [
        (50, 50, 550, 80),  # title spanning both columns
        (310, 100, 550, 300),  # right column, top
        (50, 100, 290, 300),  # left column, top
        (50, 320, 290, 500),  # left column, bottom
        (50, 520, 550, 600),  # wide figure
        (310, 320, 550, 500),  # right column, bottom
        (50, 620, 290, 700),  # below the figure: left
        (310, 620, 550, 700),  # below the figure: right
    ]
    assert reading_order_of(boxes, W) == [0, 2, 3, 1, 5, 4, 6, 7]


def test_dpr_paper_reading_order(papers_dir: Path) -> None:
    doc = parse_pdf(papers_dir / "unstructured__multi-column_DPR.pdf", FAST)
    texts = _texts(doc.pages[0])
    order = [
        next(i for i, t in enumerate(texts) if t.startswith(prefix))
        for prefix in ("Dense Passage Retrieval", "Abstract", "Open-domain question answering relies", "1 Introduction", "Retrieval in open-domain QA")
    ]
    assert order == sorted(order)
    assert doc.title == "Dense Passage Retrieval for Open-Domain Question Answering"


def test_paper_captions_link_to_their_tables(papers_dir: Path) -> None:
    doc = parse_pdf(papers_dir / "unstructured__multi-column_DPR.pdf", FAST)
    linked = [b for p in doc.pages for b in p.blocks if b.kind == "caption" and b.caption_of is not None]
    assert any(b.text.startswith("Table 1") for b in linked)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pdfplumber__empty.pdf", "empty file"),
        ("pdfplumber__password-example.pdf", "encrypted; pass its password with --password"),
        ("pypdf__password.pdf", "encrypted; pass its password with --password"),
        ("pypdf__unreadablemetadata.pdf", "no pages"),
    ],
)
def test_bad_inputs_fail_with_one_line(robustness_dir: Path, name: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_pdf(robustness_dir / name, FAST)
    text = str(info.value)
    assert text.startswith(name) and message in text and "\n" not in text


def test_password_opens_encrypted_pdf(robustness_dir: Path) -> None:
    doc = parse_pdf(robustness_dir / "pypdf__password.pdf", FAST, password="openpassword")
    assert doc.page_count >= 1
    with pytest.raises(ParseError, match="password given is wrong"):
        parse_pdf(robustness_dir / "pypdf__password.pdf", FAST, password="nope")


def test_not_a_pdf_and_page_limit(tmp_path: Path, sample_pdf: Path) -> None:
    fake = tmp_path / "notes.pdf"
    fake.write_text("just some text, not a PDF")
    with pytest.raises(ParseError, match="notes.pdf: not a PDF"):
        parse_pdf(fake, FAST)
    with pytest.raises(ParseError, match="over the limit of 1"):
        parse_pdf(sample_pdf, ParseConfig(ocr=OcrMode.NEVER, max_pages=1))


def test_malformed_and_invisible_text_layers(robustness_dir: Path) -> None:
    repaired = parse_pdf(robustness_dir / "pdfplumber__malformed-from-issue-932.pdf", FAST)
    assert repaired.page_count == 1
    invisible = parse_pdf(robustness_dir / "docling__invisible_text_layer.pdf", FAST)
    # An invisible (render mode 3) layer is the searchable text of a scan: keep it.
    assert "Invisible OCR text layer" in invisible.pages[0].text


def test_right_to_left_text_on_rotated_pages(robustness_dir: Path) -> None:
    doc = parse_pdf(robustness_dir / "pypdf__arabic_rotated.pdf", FAST)
    assert [p.rotation for p in doc.pages] == [90, 180, 270, 0]
    assert all("habibi" in p.text for p in doc.pages)


needs_tesseract = pytest.mark.skipif(not tesseract_available(), reason="tesseract-ocr is not installed")


@needs_tesseract
def test_rotated_scan_is_turned_upright_and_ocrd(robustness_dir: Path) -> None:
    calls = []
    doc = parse_pdf(
        robustness_dir / "docling__ocr_test_rotated_90.pdf",
        ParseConfig(ocr=OcrMode.AUTO),
        on_page=lambda *args: calls.append(args),
    )
    page = doc.pages[0]
    assert page.ocr_used and not page.has_text_layer
    assert calls == [(1, 1, 1)]  # (pages done, page count, pages OCR'd): the web app shows OCR
    assert "Docling bundles PDF document conversion" in page.text


@needs_tesseract
def test_ocr_never_leaves_scans_empty(robustness_dir: Path) -> None:
    doc = parse_pdf(robustness_dir / "docling__ocr_test_rotated_90.pdf", FAST)
    assert not doc.pages[0].ocr_used and doc.pages[0].text == ""


def test_missing_tesseract_warns_once_and_keeps_going(robustness_dir: Path, monkeypatch, caplog) -> None:
    from pipeline.ingestion import parse

    monkeypatch.setattr(parse.shutil, "which", lambda _name: None)
    monkeypatch.setattr(parse, "_TESSERACT_WARNED", False)
    with caplog.at_level("WARNING"):
        doc = parse_pdf(robustness_dir / "pymupdf__test_3863_imageonly_8pp.pdf", ParseConfig(ocr=OcrMode.AUTO))
    assert doc.page_count == 8 and not any(p.ocr_used for p in doc.pages)
    warnings = [r for r in caplog.records if "Tesseract not found" in r.message]
    assert len(warnings) == 1
