"""Pipeline settings: parsing, OCR, chunking, ingestion and answering."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.config import GeneratorConfig, GeneratorRuntime, RefragConfig, SamplerConfig, UragConfig
from retrieval.config import RetrievalMode


class OcrMode(enum.StrEnum):
    AUTO = "auto"  # OCR pages that have no text layer
    ALWAYS = "always"  # OCR every page, replacing the text layer
    NEVER = "never"


class ParserKind(enum.StrEnum):
    FAST = "fast"  # structural parse of PyMuPDF spans with layout rules (~30 pages/s)
    LAYOUT = "layout"  # PyMuPDF's bundled layout-analysis model (~1 page/s, quality mode)


class TableMode(enum.StrEnum):
    GRID = "grid"  # table regions rebuilt as a grid: rows from lines, columns from white gaps
    SPANS = "spans"  # parser 1: rows of spans, cells cut at fixed gaps (the ablation baseline)


class FigureOcr(enum.StrEnum):
    RAPIDOCR = "rapidocr"  # PP-OCRv4 on onnxruntime (weights in rapidocr-onnxruntime)
    TESSERACT = "tesseract"  # the tesseract program, as for scanned pages
    OFF = "off"  # figures keep only the text layer's words inside them


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
    tables: TableMode = Field(
        default=TableMode.GRID,
        description="How table regions (a 'Table N' caption or rules mark them) become text: "
        "'grid' rebuilds rows and columns as Markdown; 'spans' is parser 1's rows of spans.",
    )
    figure_ocr: FigureOcr = Field(
        default=FigureOcr.RAPIDOCR,
        description="OCR engine for text inside raster figures of born-digital pages (charts, "
        "infographics; photographs skipped) and the regions of slide pages: their words, read in "
        "rows, become the figure's text ('Figure text:' lines). 'off': none.",
    )
    figure_ocr_dpi: int = Field(default=150, ge=72, le=400, description="Resolution figures are OCR'd at.")
    figure_ocr_min_side: float = Field(
        default=72.0,
        ge=0,
        description="Only figures at least this many points wide and high are OCR'd (1 inch).",
    )
    figure_ocr_budget_s: float = Field(
        default=120.0,
        ge=0,
        description="Most seconds of figure OCR per document; later figures keep their text layer.",
    )
    layout_detector: bool = Field(
        default=True,
        description="On OCR'd pages that look like slides or infographics (landscape, or portrait "
        "with large strongly coloured areas; not plain scans), find figure and table regions with "
        "rapid-layout's detector; their text is read by figure_ocr (else the page OCR's words).",
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
    parse_timeout_s: float = Field(
        default=1800,
        gt=0,
        description="Most seconds parsing one document may take; past it the parser is stopped "
        "and the document recorded as failed (a hung or hostile file). Text PDFs parse at ~30 "
        "pages/s, OCR at 4-7 s a page on two cores: scanned books over ~250 pages need more.",
    )
    parse_memory_mb: int = Field(
        default=4096,
        ge=64,
        description="Most memory (address space, MB) parsing one document may add to the parser "
        "process; past it the document is recorded as failed (e.g. a decompression bomb). "
        "Measured peaks: ~350 MB for a 619-page text PDF, ~460 MB with OCR, ~600 MB with the "
        "layout parser (117 pages); figure OCR and the slide layout detector add 1.6 GB or more "
        "of address space (their onnxruntime sessions, kept by the worker for later documents), "
        "which 2048 did not leave room for on slide decks.",
    )
    keep_source: bool = Field(
        default=True, description="Keep a copy of each PDF in the library (page viewer, --reindex)."
    )
    store_block_vectors: bool = Field(
        default=True,
        description="Store each block's vector (the index's dense encoder) with the document, so "
        "the evidence sampler reads it instead of embedding ~55 blocks per question. Off: "
        "questions embed the blocks they need and store them then.",
    )


class RayConfig(BaseModel):
    """Ray, for `folio ingest --ray` and `folio batch --ray` (without --ray it is never used)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        default=None,
        description="Ray to use when --ray gives no address: 'auto' (the cluster this machine "
        "belongs to), 'ray://HOST:10001' (Ray Client) or 'HOST:6379'; None: start a local Ray "
        "for the run.",
    )
    ingest_workers: int = Field(
        default=2, ge=1, description="Ingest actors (each parses and embeds one document at a time)."
    )
    answer_workers: int = Field(
        default=1,
        ge=1,
        description="Answering actors of `folio batch --ray` (each loads the generator once).",
    )
    cpus_per_worker: float = Field(
        default=1.0, gt=0, description="CPUs Ray reserves for each actor (and its torch threads)."
    )
    gpus_per_answer_worker: float = Field(
        default=0.0, ge=0, description="GPUs Ray reserves for each answering actor (0: none)."
    )
    local_cpus: int | None = Field(
        default=None, ge=1, description="CPUs a local Ray may use (None: all of this machine's)."
    )


class ContextMode(enum.StrEnum):
    """Where an answer's evidence comes from."""

    RETRIEVED = "retrieved"  # the hybrid retriever's best chunks (then the sampler, if on)
    FIRST_PAGES = "first-pages"  # the document from page 1, cut to the token budget
    NONE = "none"  # no evidence: the model answers from the question alone


class AnswerConfig(BaseModel):
    """How a question becomes an answer: evidence, sampling, budget, citations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context: ContextMode = Field(
        default=ContextMode.RETRIEVED,
        description="Evidence source: retrieved (search), first-pages (no retrieval), none.",
    )
    use_sampler: bool = Field(
        default=True,
        description="WuKong sampling of the retrieved chunks' blocks; off: the chunks' text in "
        "rank order under the same budget.",
    )
    k: int = Field(default=20, ge=1, le=200, description="Chunks retrieved per question.")
    retrieval_mode: RetrievalMode | None = Field(
        default=None, description="Retriever (None: the configured retrieval mode)."
    )
    token_budget: int = Field(
        default=1000,
        ge=0,
        description="Most evidence tokens in the prompt (the model's tokens), in every context mode.",
    )
    neighbours: int = Field(
        default=1,
        ge=0,
        description="Blocks before and after each retrieved block on its page also compete in "
        "the sampler.",
    )
    page_figures: bool = Field(
        default=True,
        description="Figures and tables of every retrieved page also compete in the sampler.",
    )
    ask_citations: bool = Field(
        default=False,
        description="Ask the model to end its answer with the evidence number, e.g. '42 [3]'. "
        "Small models answer worse when asked; answers without [n] are attributed to the "
        "most similar evidence instead.",
    )
    max_new_tokens: int = Field(
        default=48, ge=1, description="Most tokens of one answer (short answers)."
    )
    typed_answers: bool = Field(
        default=True,
        description="Infer the answer type from the question (integer, number, list, yes/no, "
        "short phrase, free text), ask for it after the question and keep the output cut to "
        "that type as the answer's `short` form (what `folio eval qa` scores).",
    )
    compute: bool = Field(
        default=False,
        description="For questions that need arithmetic (differences, ratios, growth, sums), "
        "ask the model for one Python arithmetic expression over numbers in the evidence, "
        "evaluate it safely and answer with the result, citing its operands; if that fails, "
        "the normal answer. Off by default: with the packaged 0.5B it answered 1 of the 17 "
        "whole-dev-split questions whose expression passed the guard (as many as without it) "
        "for a second generation of ~5 s (BENCHMARKS, issue 23's whole split).",
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    quote_evidence: bool = Field(
        default=True,
        description="Quote evidence as data: the instructions say never to follow text in it, "
        "control tokens written in documents (<|im_start|>) and lines posing as prompt turns "
        "('Question:') are defused.",
    )
    screen_instructions: bool = Field(
        default=True,
        description="Leave out of the prompt evidence sentences addressed to the model "
        "('ignore previous instructions', 'reply only with ...'); they stay in the library.",
    )
    question_first: bool = Field(
        default=False,
        description="State the question before the evidence as well as after it, so the model "
        "reads the evidence knowing the question (query-aware contextualization; off: it did "
        "not improve URaG's layer-4 evidence scores, BENCHMARKS.md).",
    )
    use_urag: bool = Field(
        default=False,
        description="URaG after the sampler: the model's first layers score the evidence items "
        "and the deeper layers read only the kept ones (off until it is shown to help).",
    )
    urag: UragConfig = Field(default_factory=UragConfig)
    use_refrag: bool = Field(
        default=False,
        description="REFRAG after the sampler: evidence chunks of `refrag.chunk_tokens` tokens "
        "enter the model as one vector each, except the share most similar to the question "
        "(prefill reads fewer positions; off until it is shown to help answers).",
    )
    refrag: RefragConfig = Field(default_factory=RefragConfig)
    answerability: bool = Field(
        default=False,
        description="After the answer, ask the model whether the evidence states it (yes/no, "
        "read from its next-token probabilities, reusing the prompt's KV cache) and combine that "
        "with the retrieval scores in a calibrated decision; below the threshold the answer is "
        "'Not answerable' (the model's draft stays in the stats).",
    )
    answerability_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Decline when the calibrated probability that the evidence answers the "
        "question is below this; None: the calibrated threshold "
        "(pipeline/answering/answerability.json).",
    )

    @model_validator(mode="after")
    def _one_prompt_shortcut(self) -> AnswerConfig:
        if self.use_urag and self.use_refrag:
            raise ValueError(URAG_OR_REFRAG)
        return self


URAG_OR_REFRAG = "URaG and REFRAG are alternatives: switch one of them off"

# Short names of per-request answer options (`resolve_options`).
_ALIASES = {
    "budget": "token_budget",
    "sampler": "use_sampler",
    "mode": "retrieval_mode",
    "typed": "typed_answers",
}


def resolve_options(
    answer: AnswerConfig, generator: GeneratorConfig, **overrides: Any
) -> tuple[AnswerConfig, GeneratorConfig]:
    """Apply per-request overrides to the answer and generator settings.

    Args:
        answer: The configured answer settings.
        generator: The configured generator.
        **overrides: `AnswerConfig` fields (`k`, `token_budget`, `context`, `use_sampler`, ...),
            `SamplerConfig` fields (`k_text`, `k_image`, ...), `model` (a generator name or
            path), and the short forms `retrieval=False` (context "first-pages"),
            `sampler=False`, `budget=N`, `mode=NAME`. None values are ignored.

    Returns:
        The (answer, generator) settings for this request.

    Raises:
        TypeError: An unknown option.
        pydantic.ValidationError: A value out of range, or URaG and REFRAG both on.
    """
    sampler_fields = set(SamplerConfig.model_fields)
    changes: dict[str, Any] = {}
    sampler_changes: dict[str, Any] = {}
    generator_changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "retrieval":
            if not value:
                changes["context"] = ContextMode.FIRST_PAGES
            elif answer.context is not ContextMode.RETRIEVED:
                changes["context"] = ContextMode.RETRIEVED
        elif key == "model":
            generator_changes["model"] = str(value)
        elif key == "runtime":
            generator_changes["runtime"] = _runtime(value)
        elif key in sampler_fields and key not in AnswerConfig.model_fields:
            sampler_changes[key] = value
        elif _ALIASES.get(key, key) in AnswerConfig.model_fields:
            changes[_ALIASES.get(key, key)] = value
        else:
            known = sorted(
                {*AnswerConfig.model_fields, *sampler_fields, *_ALIASES, "retrieval", "model", "runtime"}
            )
            raise TypeError(f"unknown answer option {key!r}; use one of: {', '.join(known)}")
    if sampler_changes:
        changes["sampler"] = answer.sampler.model_copy(update=sampler_changes)
    if changes:
        answer = AnswerConfig.model_validate({**answer.model_dump(), **changes})
    if generator_changes:
        generator = GeneratorConfig.model_validate({**generator.model_dump(), **generator_changes})
    return answer, generator


def _runtime(value: Any) -> GeneratorRuntime:
    try:
        return GeneratorRuntime(value)
    except ValueError:
        names = ", ".join(r.value for r in GeneratorRuntime)
        raise ValueError(f"unknown generator runtime {value!r}; use one of: {names}") from None
