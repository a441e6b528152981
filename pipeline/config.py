"""Pipeline settings: parsing, OCR, chunking and ingestion."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class OcrMode(enum.StrEnum):
    AUTO = "auto"  # OCR pages that have no text layer
    ALWAYS = "always"  # OCR every page, replacing the text layer
    NEVER = "never"


class ParserKind(enum.StrEnum):
    FAST = "fast"  # structural parse of PyMuPDF spans with layout rules (~30 pages/s)
    LAYOUT = "layout"  # PyMuPDF's bundled layout-analysis model (~1 page/s, quality mode)


class ParseConfig(BaseModel):
    """How a PDF becomes pages and blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parser: ParserKind = Field(default=ParserKind.FAST, description="Parser: fast rules or the layout model.")
    ocr: OcrMode = Field(default=OcrMode.AUTO, description="When to run Tesseract OCR on a page.")
    ocr_language: str = Field(default="eng", description="Tesseract language(s), e.g. 'eng+deu'.")
    ocr_dpi: int = Field(default=200, ge=72, le=600, description="Resolution pages are OCR'd at.")
    min_text_chars: int = Field(
        default=16, ge=0, description="A page with fewer text-layer characters counts as scanned."
    )
    thumbnail_dpi: int = Field(default=48, ge=10, le=300, description="Resolution of page thumbnails.")
    figure_dpi: int = Field(default=110, ge=36, le=600, description="Resolution of figure crops.")
    table_finder: bool = Field(
        default=False,
        description="Also run PyMuPDF's table finder on pages with a 'Table N' caption or ruled "
        "lines (better cells, ~0.5-1 s a page). Off: tables are rebuilt from rows of spans.",
    )
    max_pages: int = Field(default=5000, ge=1, description="Refuse documents with more pages.")


class ChunkConfig(BaseModel):
    """How blocks are grouped into retrieval chunks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_tokens: int = Field(default=160, ge=16, description="Aim for chunks of about this many tokens.")
    max_tokens: int = Field(default=320, ge=32, description="Split blocks longer than this.")


class IngestConfig(BaseModel):
    """How documents are ingested."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(default=2, ge=1, description="Parser processes (one document each).")
    keep_source: bool = Field(
        default=True, description="Keep a copy of each PDF in the library (page viewer, --reindex)."
    )
