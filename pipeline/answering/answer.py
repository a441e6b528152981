"""The question flow: retrieve -> candidate blocks -> sample -> prompt -> generate -> cite.

`Answerer.stream(question)` yields the answer's text deltas as the model writes them, then one
`Answer`: the text, its citations (document, page, region, quote), the evidence the model read
and, per stage, what was kept of what and what it cost.

Stages (each switchable per request through `AnswerConfig`):
1. Evidence. `retrieved`: the library index's best `k` chunks (within `doc_ids` when given);
   with the sampler on, their blocks, the blocks next to them and the figures and tables of their
   pages become candidates for `models.sampler` (PDF-WuKong), which keeps the top paragraphs and
   figures under the token budget in reading order; with it off, the chunks' text goes in rank
   order under the same budget. `first-pages`: the document from page 1, cut to the budget.
   `none`: no evidence.
2. Prompt: numbered evidence `[n] (page p) text` (figures as images for a vision-language model).
3. Generate (streamed).
4. Cite: `[n]` in the answer cites evidence item n. An answer that cites nothing is attributed:
   to the best-ranked item holding a short answer verbatim, else to the item most similar to the
   question and answer (dense encoder); with URaG on, only among the items its deep layers read.
   Within an item, the cited region is the block holding the answer, else the most similar block.
   "Not answerable" (when the model declines, or no evidence was found) cites nothing.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select

from models.config import EncoderConfig, GeneratorConfig, RefragConfig, SamplerConfig, UragConfig
from models.generator import (
    EVIDENCE_IS_DATA,
    Evidence,
    Generator,
    Prompt,
    build_prompt,
    defuse,
    load_generator,
)
from models.sampler import Candidate, EmbeddingCache, EvidenceSampler, SampleResult
from pipeline.answering.guard import screen
from pipeline.config import AnswerConfig, ContextMode
from pipeline.evaluation.scoring import NOT_ANSWERABLE, is_not_answerable
from pipeline.library.owners import has_owners, owner_clause
from pipeline.library.search import LibraryIndex, SearchHit
from storage import Block, Chunk, Document, DocumentStatus, Library

logger = logging.getLogger(__name__)

__all__ = [
    "CITE_INSTRUCTION",
    "Answer",
    "AnswerStats",
    "Answerer",
    "Citation",
    "EvidenceRef",
    "RetrievedChunk",
    "StageStats",
    "resolve_options",
]

CITE_INSTRUCTION = (
    "Answer the question using only the numbered evidence. "
    "Reply with only the answer (a number, a short phrase, or a list), then the number of the "
    "evidence it comes from in brackets, for example: 42 [3]. "
    'If the evidence does not contain the answer, reply "Not answerable".'
)
_MARKER = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"\w+")
_FIGURES = frozenset({"figure", "table"})
_SHORT_FIGURE_TEXT = 40
_QUOTE_CHARS = 300
_ALL_SCREENED = "(left out: text addressed to the model)"
_BARE_WORDS = 8


# ------------------------------------------------------------------------------ public data


@dataclass(frozen=True)
class Citation:
    """A region of a page that supports an answer.

    Attributes:
        doc_id: Document id (SHA-256 of the PDF).
        file_name: The PDF's file name.
        page: 1-based page number.
        bbox: (x0, y0, x1, y1) in PDF points of the displayed (rotated) page.
        quote: The supporting text (a sentence of the block, at most ~300 characters).
        block_id: The stored block.
        evidence: The evidence number `[n]` in the prompt.
        how: "cited" (the model wrote `[n]`) or "attributed" (matched after the fact).
    """

    doc_id: str
    file_name: str
    page: int
    bbox: tuple[float, float, float, float]
    quote: str
    block_id: int
    evidence: int = 0
    how: str = "cited"


@dataclass(frozen=True)
class EvidenceRef:
    """One numbered evidence item the model read.

    Attributes:
        number: Its number `[n]` in the prompt.
        doc_id: Document id.
        file_name: The PDF's file name.
        page: 1-based page.
        block_ids: The stored blocks it is made of.
        kind: text, figure or table.
        score: Sampler similarity, or retrieval score without the sampler (0 for first pages).
        tokens: Its tokens in the prompt (the model's tokenizer).
        text: The text the model read.
        image: Path of the figure image sent to a vision-language model, if any.
    """

    number: int
    doc_id: str
    file_name: str
    page: int
    block_ids: tuple[int, ...]
    kind: str
    score: float
    tokens: int
    text: str
    image: str | None = None


@dataclass(frozen=True)
class RetrievedChunk:
    """One chunk retrieval returned for the question, before sampling and the budget.

    Attributes:
        doc_id: Document id.
        file_name: The PDF's file name.
        page: 1-based page.
        score: The retrieval score.
        text: The chunk's text.
    """

    doc_id: str
    file_name: str
    page: int
    score: float
    text: str


@dataclass(frozen=True)
class StageStats:
    """What one stage kept of what it was given, and its time.

    Tokens are the answering model's tokens, except for `retrieve`, which counts the chunker's
    estimate (words and punctuation) of the chunks searched and retrieved. `prompt` keeps the
    evidence tokens of the whole prompt's tokens; `generate` the tokens generated of the most
    allowed.
    """

    name: str
    kept_items: int
    total_items: int
    kept_tokens: int
    total_tokens: int
    ms: float


@dataclass(frozen=True)
class AnswerStats:
    """What an answer cost.

    Attributes:
        stages: Per-stage stats in order (retrieve, candidates, sample | budget | first-pages,
            screen (sentences kept of the evidence's), urag, prompt, generate).
        prompt_tokens: Tokens of the rendered prompt.
        new_tokens: Tokens generated.
        ttft_ms: From the question to the first answer text (retrieval, sampling and prefill).
        prefill_ms: The model's prefill alone.
        decode_ms: Decode steps after the first token.
        tokens_per_s: Decode speed (tokens after the first per second of decoding).
        total_ms: The whole question.
        model: The generator (`GeneratorConfig.model`).
        context: The evidence source (retrieved, first-pages, none).
        sampler: Whether the WuKong sampler chose the evidence.
        stop_reason: Why generation ended ("" when nothing was generated).
        urag_kept: With URaG on, the evidence numbers `[n]` the deep layers read.
        urag_pages: With URaG on, the pages of those items.
        refrag_ratio: With REFRAG on, prompt positions without compression / with it (1: off).
        refrag_compressed: With REFRAG on, per evidence item [n], how many of its chunks the
            model read as one vector each (the item, its page and regions stay citable).
    """

    stages: tuple[StageStats, ...] = ()
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    tokens_per_s: float = 0.0
    total_ms: float = 0.0
    model: str = ""
    context: str = ""
    sampler: bool = False
    stop_reason: str = ""
    urag_kept: tuple[int, ...] = ()
    urag_pages: tuple[int, ...] = ()
    refrag_ratio: float = 1.0
    refrag_compressed: tuple[int, ...] = ()

    def stage(self, name: str) -> StageStats | None:
        """The stats of the named stage, or None."""
        return next((s for s in self.stages if s.name == name), None)


@dataclass(frozen=True)
class Answer:
    """An answer with its citations, evidence and costs; or the error that prevented it.

    Attributes:
        question: The question as asked.
        text: The answer as generated (with any `[n]` markers), or "Not answerable".
        citations: Supporting regions, first the best.
        stats: Costs per stage (None when the question failed before answering).
        error: Why the question failed (batch runs record failures here), else None.
        not_answerable: The system declined (model said so, or no evidence was found).
        evidence: The numbered evidence the model read.
        doc_ids: The documents the question was restricted to (empty: the whole library).
        id: The caller's question id (batch input), if any.
        retrieved: The chunks retrieval returned, best first (empty unless the context is
            `retrieved`).
    """

    question: str
    text: str
    citations: tuple[Citation, ...] = ()
    stats: AnswerStats | None = None
    error: str | None = None
    not_answerable: bool = False
    evidence: tuple[EvidenceRef, ...] = ()
    doc_ids: tuple[str, ...] = ()
    id: str | None = None
    retrieved: tuple[RetrievedChunk, ...] = ()

    @property
    def plain(self) -> str:
        """The answer without citation markers."""
        return re.sub(r"\s+", " ", _MARKER.sub("", self.text)).strip()

    @property
    def ok(self) -> bool:
        """Whether the question was answered (possibly with "Not answerable")."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Answer:
        """The inverse of `to_dict`.

        Raises:
            ValueError: `data` is not an answer written by `to_dict`.
        """
        try:
            stats = data.get("stats")
            return cls(
                question=data["question"],
                text=data["text"],
                citations=tuple(
                    Citation(**{**c, "bbox": tuple(c["bbox"])}) for c in data.get("citations", ())
                ),
                stats=None
                if stats is None
                else AnswerStats(
                    **{
                        **stats,
                        "stages": tuple(StageStats(**s) for s in stats.get("stages", ())),
                        "urag_kept": tuple(stats.get("urag_kept", ())),
                        "urag_pages": tuple(stats.get("urag_pages", ())),
                        "refrag_compressed": tuple(stats.get("refrag_compressed", ())),
                    }
                ),
                error=data.get("error"),
                not_answerable=bool(data.get("not_answerable", False)),
                evidence=tuple(
                    EvidenceRef(**{**e, "block_ids": tuple(e["block_ids"])})
                    for e in data.get("evidence", ())
                ),
                doc_ids=tuple(data.get("doc_ids", ())),
                id=data.get("id"),
                retrieved=tuple(RetrievedChunk(**r) for r in data.get("retrieved", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an answer record ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def failed(
        cls, question: str, error: str, *, doc_ids: Sequence[str] = (), id: str | None = None
    ) -> Answer:
        """An answer that records a failure."""
        return cls(question=question, text="", error=error, doc_ids=tuple(doc_ids), id=id)


# ------------------------------------------------------------------------------- options

_ALIASES = {"budget": "token_budget", "sampler": "use_sampler", "mode": "retrieval_mode"}
_SAMPLER_FIELDS = set(SamplerConfig.model_fields)


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
            `sampler=False`, `budget=N`, `mode=NAME`.

    Returns:
        The (answer, generator) settings for this request.

    Raises:
        TypeError: An unknown option.
        pydantic.ValidationError: A value out of range.
    """
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
        elif key in _SAMPLER_FIELDS and key not in AnswerConfig.model_fields:
            sampler_changes[key] = value
        elif _ALIASES.get(key, key) in AnswerConfig.model_fields:
            changes[_ALIASES.get(key, key)] = value
        else:
            known = sorted(
                {*AnswerConfig.model_fields, *_SAMPLER_FIELDS, *_ALIASES, "retrieval", "model"}
            )
            raise TypeError(f"unknown answer option {key!r}; use one of: {', '.join(known)}")
    if sampler_changes:
        changes["sampler"] = answer.sampler.model_copy(update=sampler_changes)
    if changes:
        answer = AnswerConfig.model_validate({**answer.model_dump(), **changes})
    if generator_changes:
        generator = GeneratorConfig.model_validate({**generator.model_dump(), **generator_changes})
    return answer, generator


# ------------------------------------------------------------------------------ internals


@dataclass(frozen=True)
class _BlockRow:
    """A stored block as plain data."""

    id: int
    doc_id: str
    page: int
    kind: str
    bbox: tuple[float, float, float, float]
    text: str
    reading_order: int
    asset: Path | None
    caption_of: int | None


@dataclass
class _Item:
    """An evidence item being assembled (blocks of one page)."""

    doc_id: str
    page: int
    kind: str
    blocks: list[_BlockRow]
    text: str
    score: float
    rank: int = 0
    tokens: int = 0
    image: Path | None = None
    positions: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------- the answerer


class Answerer:
    """Answers questions over a library; loads its models once and keeps them.

    Args:
        library: The open library.
        index: Its search index.
        config: Default answer settings (per request: `resolve_options`).
        generator_config: The default generator.
        encoder_config: Encoders (the sampler's text encoder is the index's dense encoder when
            the index has one, else a new one from this config).
        model_cache: Folder for converted packaged models (default: the library's `models/`).
        load: Loads a generator (tests pass a fake).
        text_encoder: The sampler's text encoder, instead of the index's (tests pass a fake).
        image_encoder: The sampler's image encoder, instead of EfficientNet-Lite0.

    Example:
        >>> answerer = Answerer(library, index, AnswerConfig(), GeneratorConfig(), EncoderConfig())
        >>> answer = answerer.ask("What is the default chunk size?")
        >>> answer.text, [(c.file_name, c.page) for c in answer.citations]
    """

    def __init__(
        self,
        library: Library,
        index: LibraryIndex,
        config: AnswerConfig | None = None,
        generator_config: GeneratorConfig | None = None,
        encoder_config: EncoderConfig | None = None,
        *,
        model_cache: Path | None = None,
        load: Callable[..., Generator] = load_generator,
        text_encoder: Any | None = None,
        image_encoder: Any | None = None,
    ) -> None:
        self.library = library
        self.index = index
        self.config = config or AnswerConfig()
        self.generator_config = generator_config or GeneratorConfig()
        self.encoder_config = encoder_config or EncoderConfig()
        self.model_cache = model_cache or library.models_dir
        self._load = load
        self._generators: dict[GeneratorConfig, Generator] = {}
        self._text_encoder: Any | None = text_encoder
        self._image_encoder: Any | None = image_encoder
        self._samplers: dict[tuple[SamplerConfig, int], EvidenceSampler] = {}
        self._embeddings = EmbeddingCache()
        self._urag: dict[tuple[UragConfig, int], Any] = {}
        self._refrag: dict[tuple[str | None, int], Any] = {}
        # NOTE: concurrent questions (threads of the web app or of a caller) share the models;
        # one lock makes sure each is loaded once. Questions themselves run without it.
        self._loading = threading.RLock()

    # ------------------------------------------------------------------------- resources

    def generator(self, config: GeneratorConfig | None = None) -> Generator:
        """The loaded generator for `config` (loaded on first use; the last two are kept)."""
        config = config or self.generator_config
        with self._loading:
            return self._generator(config)

    def _generator(self, config: GeneratorConfig) -> Generator:
        if config not in self._generators:
            if len(self._generators) >= 2:
                oldest = self._generators.pop(next(iter(self._generators)))
                # Samplers count tokens with their generator's tokenizer: drop them with it.
                self._samplers = {k: v for k, v in self._samplers.items() if k[1] != id(oldest)}
            self._generators[config] = self._load(config, cache_dir=self.model_cache)
        return self._generators[config]

    def sampler(self, config: SamplerConfig, generator: Generator) -> EvidenceSampler:
        """The sampler for `config`, counting tokens with `generator`'s tokenizer."""
        with self._loading:
            return self._sampler(config, generator)

    def _sampler(self, config: SamplerConfig, generator: Generator) -> EvidenceSampler:
        key = (config, id(generator))
        if key not in self._samplers:
            if self._text_encoder is None:
                dense = self.index.retriever.dense
                if dense is not None:
                    self._text_encoder = dense.encoder
                else:
                    from models.encoders import MiniLMEncoder

                    self._text_encoder = MiniLMEncoder(self.encoder_config)
            if self._image_encoder is None and config.image_features:
                from models.encoders import EfficientNetImageEncoder

                self._image_encoder = EfficientNetImageEncoder(self.encoder_config)
            sampler = EvidenceSampler(
                config,
                self._text_encoder,
                self._image_encoder if config.image_features else None,
                count_tokens=_token_counter(generator),
                cache=self._embeddings,
            )
            self._samplers[key] = sampler
        return self._samplers[key]

    def urag(self, config: UragConfig, generator: Generator) -> Any:
        """The URaG runner (`models.urag.UragRunner`) for `config` on `generator`."""
        with self._loading:
            return self._urag_runner(config, generator)

    def _urag_runner(self, config: UragConfig, generator: Generator) -> Any:
        key = (config, id(generator))
        if key not in self._urag:
            from models.urag import UragRunner

            self._urag = {k: v for k, v in self._urag.items() if k[1] == id(generator)}
            self._urag[key] = UragRunner(generator, config)
        return self._urag[key]

    def refrag(self, config: RefragConfig, generator: Generator) -> Any:
        """The REFRAG compressor (`models.refrag.RefragCompressor`) for `generator`: its
        projector loads once per generator.

        Raises:
            FileNotFoundError: No projector file (train one with `python -m bench.refrag_train`).
            ValueError: A projector trained for another hidden size.
        """
        with self._loading:
            key = (config.projector, id(generator))
            if key not in self._refrag:
                from models.refrag import (
                    ChunkEncoder,
                    ChunkProjector,
                    RefragCompressor,
                    default_projector_path,
                )

                path = Path(config.projector) if config.projector else default_projector_path(generator)
                self._refrag = {k: v for k, v in self._refrag.items() if k[1] == id(generator)}
                projector = ChunkProjector.load(path)
                self._refrag[key] = RefragCompressor(
                    generator, projector, ChunkEncoder.for_projector(projector)
                )
            return self._refrag[key]

    # ------------------------------------------------------------------------------ asking

    def ask(
        self,
        question: str,
        *,
        doc_ids: Collection[str] | None = None,
        config: AnswerConfig | None = None,
        generator_config: GeneratorConfig | None = None,
        id: str | None = None,
        owner: str | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer one question (see `stream`); returns the final `Answer`."""
        answer = None
        for part in self.stream(
            question, doc_ids=doc_ids, config=config, generator_config=generator_config, id=id,
            owner=owner, on_progress=on_progress,
        ):  # fmt: skip
            if isinstance(part, Answer):
                answer = part
        assert answer is not None  # stream always ends with the Answer
        return answer

    def stream(
        self,
        question: str,
        *,
        doc_ids: Collection[str] | None = None,
        config: AnswerConfig | None = None,
        generator_config: GeneratorConfig | None = None,
        id: str | None = None,
        owner: str | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> Iterator[str | Answer]:
        """Answer one question, streaming.

        Args:
            question: The question.
            doc_ids: Only these documents (ids, unique id prefixes or file names); None: all
                of `owner`'s.
            config: Answer settings for this request (default: the answerer's).
            generator_config: The generator for this request (default: the answerer's).
            id: A question id carried into the `Answer`.
            owner: Whose library to answer from (None: the local user's; pipeline/owners.py).
            on_progress: Called with a short status line as each stage starts ("Retrieving
                from the library…", "Reading 1,062 prompt tokens…", ...); what it raises is
                logged, not raised.

        Yields:
            Text deltas of the answer as generated, then the final `Answer`.

        Raises:
            ValueError: A blank question, or first-pages context without a document.
            LookupError: A document that is not in the library.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question must be non-empty text, got {question!r}")
        cfg = config or self.config
        gen_cfg = generator_config or self.generator_config
        start = time.perf_counter()
        docs = self._resolve_docs(doc_ids, owner) if doc_ids else None
        generator = self.generator(gen_cfg)
        count = _token_counter(generator)
        stages: list[StageStats] = []
        say = _Progress(on_progress)

        hits: list[SearchHit] = []
        if cfg.context is ContextMode.RETRIEVED:
            items, hits = self._retrieved(question, docs, owner, cfg, generator, stages, say)
        elif cfg.context is ContextMode.FIRST_PAGES:
            say("Reading the document from its first page…")
            items = self._first_pages(docs, owner, cfg, count, stages)
        else:
            items = []
        names = self._file_names({i.doc_id for i in items})
        read = self._quoted_texts(items, cfg, generator, count, stages)
        refs = tuple(
            EvidenceRef(
                number=n,
                doc_id=item.doc_id,
                file_name=names.get(item.doc_id, ""),
                page=item.page,
                block_ids=tuple(b.id for b in item.blocks),
                kind=item.kind,
                score=round(float(item.score), 4),
                tokens=item.tokens,
                text=text,
                image=str(item.image) if item.image is not None else None,
            )
            for n, (item, text) in enumerate(zip(items, read, strict=True), start=1)
        )
        common = {
            "question": question,
            "evidence": refs,
            "doc_ids": tuple(docs or ()),
            "id": id,
            "retrieved": tuple(
                RetrievedChunk(h.doc_id, h.file_name, h.page, float(h.score), h.text) for h in hits
            ),
        }
        if cfg.context is not ContextMode.NONE and not items:
            stats = AnswerStats(
                stages=tuple(stages),
                ttft_ms=(time.perf_counter() - start) * 1000,
                total_ms=(time.perf_counter() - start) * 1000,
                model=gen_cfg.model,
                context=str(cfg.context),
                sampler=cfg.use_sampler and cfg.context is ContextMode.RETRIEVED,
            )
            yield NOT_ANSWERABLE
            yield Answer(text=NOT_ANSWERABLE, stats=stats, not_answerable=True, **common)
            return

        prompt = self.build_prompt(question, items, read, names, cfg, generator)
        t_prompt = time.perf_counter()
        runner = None
        compression = None
        if cfg.use_urag and cfg.use_refrag:
            raise ValueError("URaG and REFRAG are alternatives: switch one of them off")
        if cfg.use_refrag and items and not prompt.images:
            from models.urag import layout_prompt

            t_compress = time.perf_counter()
            layout = layout_prompt(generator, prompt)
            compression = self.refrag(cfg.refrag, generator).compress(
                layout.inputs.input_ids, layout.segments, k=cfg.refrag.chunk_tokens,
                expand_fraction=cfg.refrag.expand_fraction, question=question,
            )  # fmt: skip
            stages.append(
                StageStats(
                    "refrag", len(compression.expanded), compression.chunks,
                    compression.positions, compression.tokens_before,
                    (time.perf_counter() - t_compress) * 1000,
                )
            )  # fmt: skip
            stream = generator.stream(
                compression.inputs, max_new_tokens=cfg.max_new_tokens, stop_at_newline=True,
                **say.runner(generator),
            )  # fmt: skip
        elif cfg.use_urag and items and not prompt.images:
            from models.urag import layout_prompt

            runner = self.urag(cfg.urag, generator)
            layout = layout_prompt(generator, prompt)
            runner.use(layout)
            stream = generator.stream(
                layout.inputs, max_new_tokens=cfg.max_new_tokens, stop_at_newline=True,
                **say.runner(runner),
            )  # fmt: skip
        else:
            stream = generator.stream(
                prompt, max_new_tokens=cfg.max_new_tokens, stop_at_newline=True,
                **say.runner(generator),
            )  # fmt: skip
        ttft: float | None = None
        for delta in stream:
            if ttft is None:
                ttft = time.perf_counter()
                say("Writing the answer…")
            yield delta
        result = stream.result
        end = time.perf_counter()
        evidence_tokens = sum(item.tokens for item in items)
        urag_kept: tuple[int, ...] = ()
        if runner is not None and runner.selection is not None:
            chosen = runner.selection
            urag_kept = tuple(i + 1 for i in chosen.kept)
            stages.append(
                StageStats(
                    "urag", len(chosen.kept), len(items), chosen.kept_evidence_tokens,
                    chosen.evidence_tokens, chosen.ms,
                )
            )  # fmt: skip
        stages.append(
            StageStats("prompt", len(items), len(items), evidence_tokens, result.prompt_tokens, 0.0)
        )
        stages.append(
            StageStats(
                "generate", 1, 1, result.new_tokens, cfg.max_new_tokens, (end - t_prompt) * 1000
            )
        )

        raw = result.text.strip()
        declined = is_not_answerable(_MARKER.sub("", raw))
        citations: tuple[Citation, ...] = ()
        if not declined:
            say("Finding the cited pages…")
            sampler = self.sampler(cfg.sampler, generator)
            citations = _cite(question, raw, items, names, sampler, read=urag_kept or None)
        stats = AnswerStats(
            stages=tuple(stages),
            prompt_tokens=result.prompt_tokens,
            new_tokens=result.new_tokens,
            ttft_ms=((ttft or end) - start) * 1000,
            prefill_ms=result.prefill_s * 1000,
            decode_ms=result.decode_s * 1000,
            tokens_per_s=result.decode_tokens_per_s,
            total_ms=(time.perf_counter() - start) * 1000,
            model=gen_cfg.model,
            context=str(cfg.context),
            sampler=cfg.use_sampler and cfg.context is ContextMode.RETRIEVED,
            stop_reason=str(result.stop_reason),
            urag_kept=urag_kept,
            urag_pages=tuple(sorted({items[n - 1].page for n in urag_kept})),
            refrag_ratio=round(compression.ratio, 3) if compression is not None else 1.0,
            refrag_compressed=compression.items_compressed if compression is not None else (),
        )
        yield Answer(
            text=NOT_ANSWERABLE if declined else raw,
            citations=citations,
            stats=stats,
            not_answerable=declined,
            **common,
        )

    # --------------------------------------------------------------------------- evidence

    def build_prompt(
        self,
        question: str,
        items: Sequence[_Item],
        texts: Sequence[str],
        names: Mapping[str, str],
        cfg: AnswerConfig,
        generator: Generator,
    ) -> Prompt:
        """The prompt of a question: instructions, the items labelled and numbered, the question.

        `texts` are the items' texts as the model reads them (`_quoted_texts`).
        """
        several_docs = len({i.doc_id for i in items}) > 1
        evidence = [
            Evidence(
                text=_label(item, names, several_docs) + text,
                image=item.image if generator.is_multimodal else None,
            )
            for item, text in zip(items, texts, strict=True)
        ]
        instructions = CITE_INSTRUCTION if cfg.ask_citations else generator.config.instructions
        if cfg.quote_evidence and evidence:
            instructions = f"{instructions} {EVIDENCE_IS_DATA}".strip()
            question = defuse(question, generator.control_tokens, role_lines=False)
        return build_prompt(
            question, evidence, instructions=instructions, question_first=cfg.question_first
        )

    def _quoted_texts(
        self,
        items: Sequence[_Item],
        cfg: AnswerConfig,
        generator: Generator,
        count: Callable[[str], int],
        stages: list[StageStats],
    ) -> list[str]:
        """The text of each item as the model reads it: screened, then quoted as data."""
        started = time.perf_counter()
        texts = [item.text for item in items]
        if cfg.screen_instructions and texts:
            results = [screen(text) for text in texts]
            removed = [r for r in results if r.removed]
            for item, result in zip(items, results, strict=True):
                if result.removed:
                    logger.warning(
                        "left out of the prompt, addressed to the model (%s p. %d): %s",
                        item.doc_id[:12], item.page, " | ".join(result.removed)[:300],
                    )  # fmt: skip
            texts = [r.text or _ALL_SCREENED for r in results]
            total = sum(r.sentences for r in results)
            tokens = sum(i.tokens for i in items)
            stages.append(
                StageStats(
                    "screen",
                    total - sum(len(r.removed) for r in removed),
                    total,
                    tokens - sum(count(" ".join(r.removed)) for r in removed),
                    tokens,
                    (time.perf_counter() - started) * 1000,
                )
            )
        if cfg.quote_evidence:
            texts = [defuse(text, generator.control_tokens) for text in texts]
        return texts

    def _retrieved(
        self,
        question: str,
        docs: list[str] | None,
        owner: str | None,
        cfg: AnswerConfig,
        generator: Generator,
        stages: list[StageStats],
        say: _Progress,
    ) -> tuple[list[_Item], list[SearchHit]]:
        """Retrieve, then sample (or take the chunks in rank order) under the budget.

        Returns:
            (the evidence items, the retrieved hits in rank order).
        """
        say("Retrieving from the library…")
        t0 = time.perf_counter()
        hits = self.index.search(
            question, k=cfg.k, mode=cfg.retrieval_mode, doc_ids=docs, owner=owner
        )
        scope_items, scope_tokens = self._scope_size(docs, owner)
        stages.append(
            StageStats(
                "retrieve", len(hits), scope_items, sum(_chunk_tokens(h) for h in hits),
                scope_tokens, (time.perf_counter() - t0) * 1000,
            )
        )  # fmt: skip
        if not hits:
            return [], hits
        count = _token_counter(generator)
        if not cfg.use_sampler:
            say("Fitting the retrieved chunks to the budget…")
            return self._ranked_chunks(hits, cfg, count, generator.is_multimodal, stages), hits

        say("Sampling evidence (WuKong)…")
        t1 = time.perf_counter()
        candidates, rows, positions = self._candidates(hits, cfg)
        stages.append(
            StageStats(
                "candidates", len(candidates), len(candidates), 0, 0,
                (time.perf_counter() - t1) * 1000,
            )
        )  # fmt: skip
        sampler = self.sampler(cfg.sampler, generator)
        sample = sampler.sample(
            question,
            candidates,
            token_budget=cfg.token_budget,
            with_images=generator.is_multimodal,
        )
        stages[-1] = StageStats(
            "candidates", len(candidates), len(candidates), sample.total_tokens,
            sample.total_tokens, stages[-1].ms,
        )  # fmt: skip
        stages.append(
            StageStats(
                "sample", len(sample.kept), len(candidates), sample.kept_tokens,
                sample.total_tokens, sample.total_ms,
            )
        )  # fmt: skip
        if sample.image_duplicates:
            logger.debug("sampler dropped %d near-duplicate figures", sample.image_duplicates)
        return _group(sample, rows, positions, generator.is_multimodal), hits

    def _ranked_chunks(
        self,
        hits: list[SearchHit],
        cfg: AnswerConfig,
        count: Callable[[str], int],
        multimodal: bool,
        stages: list[StageStats],
    ) -> list[_Item]:
        """The retrieved chunks in rank order under the budget (the no-sampler path)."""
        t0 = time.perf_counter()
        rows = self._blocks([b for h in hits for b in h.block_ids])
        items: list[_Item] = []
        remaining = cfg.token_budget
        total = 0
        for rank, hit in enumerate(hits):
            blocks = [rows[b] for b in hit.block_ids if b in rows]
            if not blocks:
                continue
            text = hit.text.strip()
            image = next(
                (b.asset for b in blocks if b.kind in _FIGURES and b.asset is not None), None
            )
            image = image if multimodal else None
            image_cost = cfg.sampler.image_token_cost if image is not None else 0
            tokens = count(text) + image_cost
            total += tokens
            if tokens > remaining:
                if image is not None or remaining < cfg.sampler.min_item_tokens:
                    continue
                text = _truncate(text, remaining, count)
                tokens = count(text)
            remaining -= tokens
            items.append(
                _Item(
                    hit.doc_id, hit.page, hit.kind if hit.kind in _FIGURES else "text", blocks,
                    text, float(hit.score), rank=rank, tokens=tokens, image=image,
                )
            )  # fmt: skip
        stages.append(
            StageStats(
                "budget", len(items), len(hits), sum(i.tokens for i in items), total,
                (time.perf_counter() - t0) * 1000,
            )
        )  # fmt: skip
        return items

    def _candidates(
        self, hits: list[SearchHit], cfg: AnswerConfig
    ) -> tuple[list[Candidate], dict[int, _BlockRow], dict[int, int]]:
        """Sampler candidates: the hits' blocks, their neighbours, their pages' figures.

        Returns:
            (candidates, block rows by id, position of each block in its page's reading order).
        """
        pages: list[tuple[str, int]] = []
        for hit in hits:
            if (hit.doc_id, hit.page) not in pages:
                pages.append((hit.doc_id, hit.page))
        by_page = self._page_blocks(pages)
        doc_rank = {d: i for i, d in enumerate(dict.fromkeys(h.doc_id for h in hits))}
        rows: dict[int, _BlockRow] = {}
        positions: dict[int, int] = {}
        chosen: set[int] = set()
        for blocks in by_page.values():
            for pos, block in enumerate(blocks):
                rows[block.id] = block
                positions[block.id] = pos
            if cfg.page_figures:
                chosen.update(b.id for b in blocks if b.kind in _FIGURES)
        for hit in hits:
            page_blocks = by_page.get((hit.doc_id, hit.page), [])
            for block_id in hit.block_ids:
                if block_id not in positions:
                    continue
                pos = positions[block_id]
                lo, hi = max(0, pos - cfg.neighbours), pos + cfg.neighbours + 1
                chosen.update(b.id for b in page_blocks[lo:hi])
        candidates = []
        for blocks in by_page.values():
            figure_orders = {b.reading_order for b in blocks if b.kind in _FIGURES}
            for pos, block in enumerate(blocks):
                if block.id not in chosen:
                    continue
                if block.kind == "caption" and block.caption_of in figure_orders:
                    continue  # the figure's text starts with its caption
                search_text = None
                if block.kind in _FIGURES and len(block.text.strip()) < _SHORT_FIGURE_TEXT:
                    context = " ".join(b.text for b in blocks[max(0, pos - 1) : pos] if b.text)
                    search_text = f"{context[:300]} {block.text}".strip()
                candidates.append(
                    Candidate(
                        id=block.id,
                        kind=block.kind,
                        text=block.text,
                        page=block.page,
                        reading_order=block.reading_order,
                        image=block.asset,
                        doc=block.doc_id,
                        doc_rank=doc_rank[block.doc_id],
                        search_text=search_text,
                    )
                )
        return candidates, rows, positions

    def _first_pages(
        self,
        docs: list[str] | None,
        owner: str | None,
        cfg: AnswerConfig,
        count: Callable[[str], int],
        stages: list[StageStats],
    ) -> list[_Item]:
        """The documents from page 1, one item per page, cut to the budget."""
        t0 = time.perf_counter()
        if docs is None:
            with self.library.sessions() as session:
                ok = list(
                    session.scalars(
                        select(Document.id)
                        .where(Document.status == DocumentStatus.OK)
                        .where(owner_clause(self.library, owner))
                    )
                )
            if len(ok) != 1:
                raise ValueError(
                    "first-pages context (no retrieval) needs the document: pass doc_ids "
                    f"(--doc ID); the library holds {len(ok)} documents"
                )
            docs = ok
        items: list[_Item] = []
        remaining = cfg.token_budget
        pages_read = total = 0
        step = 8
        for doc_id in docs:
            for first in range(1, self._page_count(doc_id) + 1, step):
                if remaining <= 0:
                    break
                by_page = self._page_range(doc_id, first, first + step - 1)
                for (_, page), blocks in sorted(by_page.items()):
                    pages_read += 1
                    figure_orders = {b.reading_order for b in blocks if b.kind in _FIGURES}
                    kept = [
                        b
                        for b in blocks
                        if b.text.strip()
                        and not (b.kind == "caption" and b.caption_of in figure_orders)
                    ]
                    if not kept or remaining <= 0:
                        continue
                    text = "\n".join(b.text.strip() for b in kept)
                    tokens = count(text)
                    total += tokens
                    if tokens > remaining:
                        if remaining < cfg.sampler.min_item_tokens:
                            remaining = 0
                            continue
                        text = _truncate(text, remaining, count)
                        tokens = count(text)
                    remaining -= tokens
                    items.append(
                        _Item(doc_id, page, "text", kept, text, 0.0, rank=len(items), tokens=tokens)
                    )
            if remaining <= 0:
                break
        stages.append(
            StageStats(
                "first-pages", len(items), pages_read, sum(i.tokens for i in items), total,
                (time.perf_counter() - t0) * 1000,
            )
        )  # fmt: skip
        return items

    # ----------------------------------------------------------------------------- storage

    def _resolve_docs(self, doc_ids: Collection[str], owner: str | None) -> list[str]:
        """Full ids of `owner`'s documents from ids, unique id prefixes or file names (in the
        given order)."""
        if isinstance(doc_ids, str):
            doc_ids = [doc_ids]
        mine = owner_clause(self.library, owner)
        out: list[str] = []
        with self.library.sessions() as session:
            for given in doc_ids:
                matches = list(
                    session.scalars(
                        select(Document.id)
                        .where(Document.id_prefix(given))
                        .where(Document.status == DocumentStatus.OK)
                        .where(mine)
                    )
                )
                if not matches:
                    matches = list(
                        session.scalars(
                            select(Document.id)
                            .where(Document.file_name == given)
                            .where(Document.status == DocumentStatus.OK)
                            .where(mine)
                        )
                    )
                if len(matches) != 1:
                    what = "no document" if not matches else f"{len(matches)} documents"
                    raise LookupError(f"{what} with id or file name {given!r} (see `folio docs`)")
                if matches[0] not in out:
                    out.append(matches[0])
        return out

    def _scope_size(self, docs: list[str] | None, owner: str | None) -> tuple[int, int]:
        """(chunks, estimated tokens) that retrieval searched."""
        query = select(func.count(Chunk.id), func.coalesce(func.sum(Chunk.token_count), 0))
        if docs is not None:
            query = query.where(Chunk.doc_id.in_(docs))
        elif owner is not None or has_owners(self.library):
            query = query.join(Document, Document.id == Chunk.doc_id).where(
                owner_clause(self.library, owner)
            )
        with self.library.sessions() as session:
            n, tokens = session.execute(query).one()
        return int(n), int(tokens)

    def _file_names(self, doc_ids: Collection[str]) -> dict[str, str]:
        if not doc_ids:
            return {}
        with self.library.sessions() as session:
            rows = session.execute(
                select(Document.id, Document.file_name).where(Document.id.in_(list(doc_ids)))
            )
            return {doc_id: name for doc_id, name in rows}

    def _blocks(self, ids: Sequence[int]) -> dict[int, _BlockRow]:
        if not ids:
            return {}
        with self.library.sessions() as session:
            return {
                b.id: self._row(b)
                for b in session.scalars(select(Block).where(Block.id.in_(list(set(ids)))))
            }

    def _page_blocks(
        self, pages: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], list[_BlockRow]]:
        """Blocks of each (doc, page), in reading order, keyed in the order given."""
        if not pages:
            return {}
        condition = or_(*(and_(Block.doc_id == d, Block.page == p) for d, p in pages))
        with self.library.sessions() as session:
            found = [self._row(b) for b in session.scalars(select(Block).where(condition))]
        out: dict[tuple[str, int], list[_BlockRow]] = {key: [] for key in pages}
        for row in sorted(found, key=lambda r: r.reading_order):
            out[(row.doc_id, row.page)].append(row)
        return out

    def _page_range(
        self, doc_id: str, first: int, last: int
    ) -> dict[tuple[str, int], list[_BlockRow]]:
        with self.library.sessions() as session:
            found = [
                self._row(b)
                for b in session.scalars(
                    select(Block)
                    .where(Block.doc_id == doc_id, Block.page >= first, Block.page <= last)
                    .order_by(Block.page, Block.reading_order)
                )
            ]
        out: dict[tuple[str, int], list[_BlockRow]] = {}
        for row in found:
            out.setdefault((row.doc_id, row.page), []).append(row)
        return out

    def _page_count(self, doc_id: str) -> int:
        with self.library.sessions() as session:
            return int(
                session.scalar(select(Document.page_count).where(Document.id == doc_id)) or 0
            )

    def _row(self, block: Block) -> _BlockRow:
        return _BlockRow(
            id=block.id,
            doc_id=block.doc_id,
            page=block.page,
            kind=str(block.kind),
            bbox=(float(block.x0), float(block.y0), float(block.x1), float(block.y1)),
            text=block.text or "",
            reading_order=block.reading_order,
            asset=self.library.asset_path(block.asset) if block.asset else None,
            caption_of=block.caption_of,
        )


# ------------------------------------------------------------------------------- helpers


class _Progress:
    """Tells the caller's `on_progress` which stage starts; a failing callback is only logged."""

    def __init__(self, callback: Callable[[str], None] | None) -> None:
        self.callback = callback

    def __call__(self, status: str) -> None:
        if self.callback is None:
            return
        try:
            self.callback(status)
        except Exception:  # noqa: BLE001 - a display callback must never break answering
            logger.exception("on_progress failed on %r", status)

    def runner(self, runner: Any) -> dict[str, Any]:
        """`Generator.stream` arguments that announce the prefill with the prompt's tokens."""
        if self.callback is None:
            return {"runner": runner} if not isinstance(runner, Generator) else {}
        return {"runner": _AnnouncingRunner(runner, self)}


class _AnnouncingRunner:
    """A runner (generator or URaG) that says "Reading N prompt tokens…" as prefill starts."""

    def __init__(self, inner: Any, say: _Progress) -> None:
        self.inner, self.say = inner, say

    def prefill(self, inputs: Any, **kwargs: Any) -> Any:
        self.say(f"Reading {inputs.num_tokens:,} prompt tokens…")
        return self.inner.prefill(inputs, **kwargs)

    def decode_step(self, tokens: Any, cache: Any) -> Any:
        return self.inner.decode_step(tokens, cache)


def _token_counter(generator: Generator) -> Callable[[str], int]:
    """Token count of a text in the generator's tokenizer (no special tokens)."""
    tokenizer = generator.tokenizer

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    return count


def _chunk_tokens(hit: SearchHit) -> int:
    return len(_WORD.findall(hit.text))


def _truncate(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest word prefix of `text` within `budget` tokens, ending with an ellipsis."""
    words = text.split(" ")
    low, high = 0, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid]) + " …") <= budget:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low]) + " …" if low else ""


def _label(item: _Item, names: Mapping[str, str], several_docs: bool) -> str:
    """Where an evidence item comes from, as the model reads it: `(page 3) ` or with the file."""
    if several_docs:
        return f"({names.get(item.doc_id, item.doc_id[:12])}, page {item.page}) "
    return f"(page {item.page}) "


def _group(
    sample: SampleResult,
    rows: Mapping[int, _BlockRow],
    positions: Mapping[int, int],
    multimodal: bool,
) -> list[_Item]:
    """Kept blocks -> evidence items: neighbouring paragraphs of a page merge into one item."""
    items: list[_Item] = []
    for kept in sample.kept:
        row = rows[kept.candidate.id]
        pos = positions[row.id]
        figure = row.kind in _FIGURES
        last = items[-1] if items else None
        if (
            last is not None
            and not figure
            and last.kind == "text"
            and (last.doc_id, last.page) == (row.doc_id, row.page)
            and last.positions[-1] + 1 == pos
        ):
            last.blocks.append(row)
            last.text = f"{last.text}\n{kept.text}"
            last.score = max(last.score, kept.score)
            last.tokens += kept.tokens
            last.positions.append(pos)
            continue
        items.append(
            _Item(
                row.doc_id, row.page, row.kind if figure else "text", [row], kept.text,
                kept.score, tokens=kept.tokens,
                image=row.asset if figure and multimodal else None, positions=[pos],
            )
        )  # fmt: skip
    for rank, item in enumerate(sorted(items, key=lambda i: -i.score)):
        item.rank = rank
    return items


def _normal(text: str) -> str:
    """Lower case, citation markers and thousands separators removed, spaces folded."""
    text = _MARKER.sub(" ", text.lower())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _contains(haystack: str, needle: str) -> bool:
    """`needle` in `haystack` as whole words/numbers (both already `_normal`)."""
    if not needle:
        return False
    pattern = r"(?<![\w.])" + re.escape(needle) + r"(?![\w])"
    return re.search(pattern, haystack) is not None


def _core(answer: str) -> str:
    """The answer without markers, surrounding quotes or end punctuation, normalised."""
    return _normal(answer).strip(" .,;:!?'\"`")


def _cite(
    question: str,
    answer: str,
    items: Sequence[_Item],
    names: Mapping[str, str],
    sampler: EvidenceSampler,
    read: Collection[int] | None = None,
) -> tuple[Citation, ...]:
    """Citations of an answer: the items it cites with `[n]`, else attributed ones.

    `read`: the evidence numbers the model's deep layers read (URaG kept them); an answer is
    only attributed to those. None: every item.
    """
    if not items:
        return ()
    numbers: list[int] = []
    for group in _MARKER.findall(answer):
        for part in re.split(r"\s*[,;]\s*", group):
            n = int(part)
            if 1 <= n <= len(items) and n not in numbers:
                numbers.append(n)
    if numbers:
        similar = _Similarity(question, _core(answer), items, sampler)
        return tuple(_region(similar, items[n - 1], n, names, "cited") for n in numbers)
    candidates = sorted(n - 1 for n in read) if read else list(range(len(items)))
    out: list[Citation] = []
    sentences = [s for s in _SENTENCE.split(answer.strip()) if _core(s)] or [answer]
    for sentence in sentences:
        similar = _Similarity(question, _core(sentence), items, sampler)
        n = _attribute(similar, items, candidates)
        citation = _region(similar, items[n - 1], n, names, "attributed")
        if all(c.block_id != citation.block_id for c in out):
            out.append(citation)
    return tuple(out)


class _Similarity:
    """Dense similarity of the question + answer to each evidence block (computed on demand).

    Block embeddings come from the sampler's cache, so the blocks it just scored cost nothing.
    """

    def __init__(
        self, question: str, core: str, items: Sequence[_Item], sampler: EvidenceSampler
    ) -> None:
        self.question, self.core = question, core
        self._items, self._sampler = items, sampler
        self._scores: dict[int, float] | None = None

    def of(self, block_id: int) -> float:
        if self._scores is None:
            blocks = [b for item in self._items for b in item.blocks]
            query = self._sampler.text_encoder.encode_queries(
                [f"{self.question} {self.core}".strip()]
            )[0]
            vectors = self._sampler.embed_texts([b.text for b in blocks])  # [N, D]
            self._scores = {b.id: float(v @ query) for b, v in zip(blocks, vectors, strict=True)}
        return self._scores[block_id]


def _attribute(similar: _Similarity, items: Sequence[_Item], candidates: Sequence[int]) -> int:
    """The evidence number an uncited answer (or sentence) comes from, among `candidates`
    (0-based item indexes)."""
    core = similar.core
    if core and len(core.split()) <= _BARE_WORDS:
        holding = [i for i in candidates if _contains(_normal(items[i].text), core)]
        if holding:
            return min(holding, key=lambda i: items[i].rank) + 1
    best = max(candidates, key=lambda i: max(similar.of(b.id) for b in items[i].blocks))
    return best + 1


def _region(
    similar: _Similarity, item: _Item, number: int, names: Mapping[str, str], how: str
) -> Citation:
    """The block of `item` that best supports the answer, as a citation."""
    core = similar.core
    blocks = [b for b in item.blocks if b.text.strip()] or item.blocks
    block = next((b for b in blocks if core and _contains(_normal(b.text), core)), None)
    if block is None:
        block = blocks[0] if len(blocks) == 1 else max(blocks, key=lambda b: similar.of(b.id))
    return Citation(
        doc_id=block.doc_id,
        file_name=names.get(block.doc_id, ""),
        page=block.page,
        bbox=block.bbox,
        quote=_quote(block.text, core, similar.question),
        block_id=block.id,
        evidence=number,
        how=how,
    )


def _quote(text: str, core: str, question: str) -> str:
    """The sentence of `text` holding the answer, else the one sharing most words with the
    question and answer; at most ~300 characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    sentences = _SENTENCE.split(flat) or [flat]
    chosen = next((s for s in sentences if core and _contains(_normal(s), core)), None)
    if chosen is None:
        words = set(_WORD.findall(f"{question} {core}".lower()))
        chosen = max(sentences, key=lambda s: len(words & set(_WORD.findall(s.lower()))))
    if len(chosen) <= _QUOTE_CHARS:
        return chosen
    at = _normal(chosen).find(core) if core else -1
    start = max(0, min(at - _QUOTE_CHARS // 3, len(chosen) - _QUOTE_CHARS)) if at > 0 else 0
    snippet = chosen[start : start + _QUOTE_CHARS].strip()
    return ("…" if start else "") + snippet + ("…" if start + _QUOTE_CHARS < len(chosen) else "")
