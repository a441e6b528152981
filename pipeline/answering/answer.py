"""The question flow: retrieve -> candidate blocks -> sample -> prompt -> generate -> cite.

`Answerer.stream(question)` yields the answer's text deltas as the model writes them, then one
`Answer`: the text, its citations (document, page, region, quote), the evidence the model read
and, per stage, what was kept of what and what it cost. It composes three public steps:
`prepare` (documents, evidence, prompt: a `Prepared`), `generate` (a `GenerationRun`) and
`cite`; research code and benchmarks call them one by one.

Stages (each switchable per request through `AnswerConfig`):
1. Evidence (`pipeline.answering.evidence`). `retrieved`: the library index's best `k` chunks
   (within `doc_ids` when given); with the sampler on, their blocks, the blocks next to them and
   the figures and tables of their pages become candidates for `models.sampler` (PDF-WuKong),
   which keeps the top paragraphs and figures under the token budget in reading order; with it
   off, the chunks' text goes in rank order under the same budget. `first-pages`: the document
   from page 1, cut to the budget. `none`: no evidence.
2. Prompt (`pipeline.answering.prompt`): numbered evidence `[n] (page p) text` (figures as
   images for a vision-language model), screened and quoted as data.
3. Generate (`pipeline.answering.generation`, streamed; URaG or REFRAG when switched on).
4. Answerability (`pipeline.answering.answerability`, when switched on): the model is asked
   whether the evidence states its draft's answer (yes/no from its next-token probabilities,
   reusing the prompt's KV cache); with the retrieval scores, a calibrated decision may turn the
   answer into "Not answerable", keeping the draft in the stats.
5. Cite (`pipeline.answering.citations`): `[n]` in the answer cites evidence item n; an answer
   that cites nothing is attributed. "Not answerable" (when the model declines, the check does,
   or no evidence was found) cites nothing.

The public types live in `pipeline.answering.types`, the loaded models in
`pipeline.answering.cache`; the names below are re-exported for existing callers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from models.config import EncoderConfig, GeneratorConfig, RefragConfig, SamplerConfig, UragConfig
from models.generator import Generator, load_generator
from models.sampler import EvidenceSampler
from pipeline.answering.answer_types import (
    COMPUTE_INSTRUCTION,
    AnswerType,
    infer_type,
    needs_arithmetic,
    short_answer,
    type_instruction,
)
from pipeline.answering.cache import ModelCache, with_runtime_for
from pipeline.answering.citations import cite, cite_numbers
from pipeline.answering.evidence import EvidenceGatherer
from pipeline.answering.generation import GenerationRun
from pipeline.answering.progress import Progress
from pipeline.answering.prompt import CITE_INSTRUCTION, build_prompt, read_texts
from pipeline.answering.types import (
    MARKER,
    Answer,
    AnswerStats,
    Citation,
    Computation,
    EvidenceItem,
    EvidenceRef,
    Generated,
    Prepared,
    RetrievedChunk,
    StageStats,
)
from pipeline.config import URAG_OR_REFRAG, AnswerConfig, ContextMode, resolve_options
from pipeline.evaluation.scoring import NOT_ANSWERABLE, is_not_answerable
from pipeline.library.documents import resolve_documents
from pipeline.library.search import LibraryIndex, SearchHit
from storage import Library

__all__ = [
    "CITE_INSTRUCTION",
    "Answer",
    "AnswerStats",
    "Answerer",
    "Citation",
    "EvidenceRef",
    "GenerationRun",
    "Prepared",
    "RetrievedChunk",
    "StageStats",
    "resolve_options",
]


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
        self.evidence = EvidenceGatherer(library, index)

        def sampler_text_encoder() -> Any | None:
            if text_encoder is not None:
                return text_encoder
            dense = index.retriever.dense
            return dense.encoder if dense is not None else None

        self._models = ModelCache(
            load,
            self.model_cache,
            self.encoder_config,
            text_encoder=sampler_text_encoder,
            image_encoder=image_encoder,
        )

    # ------------------------------------------------------------------------- resources

    def generator(self, config: GeneratorConfig | None = None) -> Generator:
        """The loaded generator for `config` (loaded on first use; the last two are kept)."""
        return self._models.generator(config or self.generator_config)

    def sampler(self, config: SamplerConfig, generator: Generator) -> EvidenceSampler:
        """The sampler for `config`, counting tokens with `generator`'s tokenizer."""
        return self._models.sampler(config, generator)

    def urag(self, config: UragConfig, generator: Generator) -> Any:
        """The URaG runner (`models.urag.UragRunner`) for `config` on `generator` (shared: a
        question binds its own pass with `runner.bind(layout)`)."""
        return self._models.urag(config, generator)

    def refrag(self, config: RefragConfig, generator: Generator) -> Any:
        """The REFRAG compressor (`models.refrag.RefragCompressor`) for `generator`.

        Raises:
            FileNotFoundError: No projector file (train one with
                `python -m pipeline.research.refrag_train`).
            ValueError: A projector trained for another hidden size.
        """
        return self._models.refrag(config, generator)

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
        """Answer one question, streaming: `prepare`, `generate`, `cite`.

        Args:
            question: The question.
            doc_ids: Only these documents (ids, unique id prefixes or file names); None: all
                of `owner`'s.
            config: Answer settings for this request (default: the answerer's).
            generator_config: The generator for this request (default: the answerer's).
            id: A question id carried into the `Answer`.
            owner: Whose library to answer from (None: the local user's; pipeline/library/owners.py).
            on_progress: Called with a short status line as each stage starts ("Retrieving
                from the library…", "Reading 1,062 prompt tokens…", ...); what it raises is
                logged, not raised.

        Yields:
            Text deltas of the answer as generated, then the final `Answer`.

        Raises:
            ValueError: A blank question, first-pages context without a document, or URaG
                and REFRAG both on.
            LookupError: A document that is not in the library.
        """
        say = Progress(on_progress)
        prepared = self.prepare(
            question, doc_ids=doc_ids, config=config, generator_config=generator_config,
            owner=owner, on_progress=on_progress,
        )  # fmt: skip
        if not prepared.answerable:
            yield NOT_ANSWERABLE
            yield _answer(prepared, None, (), id)
            return
        run = self.generate(prepared, on_progress=on_progress)
        yield from run
        generated = run.result
        citations: tuple[Citation, ...] = ()
        computed = generated.computation
        if computed is not None and computed.ok:
            citations = cite_numbers(
                prepared.question, computed.expression, prepared.items, prepared.file_names,
                computed.sources,
            )  # fmt: skip
        elif not _declines(generated):
            say("Finding the cited pages…")
            citations = self.cite(prepared, generated.text, read=generated.urag_kept)
        yield _answer(prepared, generated, citations, id)

    def prepare(
        self,
        question: str,
        *,
        doc_ids: Collection[str] | None = None,
        config: AnswerConfig | None = None,
        generator_config: GeneratorConfig | None = None,
        owner: str | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> Prepared:
        """A question's documents, evidence and prompt, before generation (see `stream` for
        the arguments).

        Raises:
            ValueError: A blank question, first-pages context without a document, or URaG
                and REFRAG both on.
            LookupError: A document that is not in the library.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question must be non-empty text, got {question!r}")
        cfg = config or self.config
        if cfg.use_urag and cfg.use_refrag:  # a `model_copy` skips AnswerConfig's validator
            raise ValueError(URAG_OR_REFRAG)
        gen_cfg = with_runtime_for(cfg, generator_config or self.generator_config)
        say = Progress(on_progress)
        started = time.perf_counter()
        docs = resolve_documents(self.library, doc_ids, owner=owner) if doc_ids else None
        generator = self.generator(gen_cfg)
        hits: list[SearchHit] = []
        items: list[EvidenceItem] = []
        stages: tuple[StageStats, ...] = ()
        if cfg.context is ContextMode.RETRIEVED:
            say("Retrieving from the library…")
            items, hits, stages = self.evidence.retrieved(
                question, docs, owner, cfg, generator,
                lambda: self.sampler(cfg.sampler, generator), say,
            )  # fmt: skip
        elif cfg.context is ContextMode.FIRST_PAGES:
            say("Reading the document from its first page…")
            items, first = self.evidence.first_pages(docs, owner, cfg, generator)
            stages = (first,)
        names = self.evidence.file_names({i.doc_id for i in items})
        texts, screened = read_texts(items, cfg, generator)
        found = cfg.context is ContextMode.NONE or bool(items)
        kind = infer_type(question) if cfg.typed_answers else None
        ask = type_instruction(kind) if kind is not None else ""
        prompt = None
        if found:
            prompt = build_prompt(question, items, texts, names, cfg, generator, ask=ask)
        compute_prompt = None
        if found and items and cfg.compute and needs_arithmetic(question):
            compute_prompt = build_prompt(
                question, items, texts, names, cfg, generator, ask=COMPUTE_INSTRUCTION
            )
        return Prepared(
            question=question,
            config=cfg,
            generator_config=gen_cfg,
            doc_ids=tuple(docs) if docs is not None else None,
            hits=tuple(hits),
            items=tuple(items),
            texts=tuple(texts),
            file_names=names,
            prompt=prompt,
            stages=(*stages, *screened),
            started=started,
            answer_type=str(kind) if kind is not None else "",
            compute_prompt=compute_prompt,
        )

    def generate(
        self, prepared: Prepared, *, on_progress: Callable[[str], None] | None = None
    ) -> GenerationRun:
        """Generation of a prepared question: iterate for the text deltas, then read
        `.result` (a `Generated` with its own stages' stats).

        Raises:
            ValueError: `prepared` has no prompt (`Prepared.answerable` is false).
        """
        generator = self.generator(prepared.generator_config)
        return GenerationRun(prepared, generator, self._models, Progress(on_progress))

    def cite(
        self, prepared: Prepared, text: str, *, read: Collection[int] = ()
    ) -> tuple[Citation, ...]:
        """The citations of `text`, an answer to `prepared` (none when it declines).

        Args:
            read: The evidence numbers the model's deep layers read (URaG's
                `Generated.urag_kept`); an uncited answer is attributed only to those. Empty:
                every item.
        """
        if _declined(text):
            return ()
        generator = self.generator(prepared.generator_config)
        sampler = self.sampler(prepared.config.sampler, generator)
        return cite(
            prepared.question, text, prepared.items, prepared.file_names, sampler,
            read=read or None,
        )  # fmt: skip


def _declined(text: str) -> bool:
    return is_not_answerable(MARKER.sub("", text))


def _declines(generated: Generated) -> bool:
    """The model declined, or the answerability check did (its draft stays in the stats)."""
    check = generated.answerability
    return _declined(generated.text) or (check is not None and not check.answerable)


def _answer(
    prepared: Prepared,
    generated: Generated | None,
    citations: tuple[Citation, ...],
    id: str | None,
) -> Answer:
    """The `Answer` of a prepared question, generated (or None: no evidence was found)."""
    cfg = prepared.config
    common: dict[str, Any] = {
        "question": prepared.question,
        "evidence": prepared.evidence,
        "doc_ids": prepared.doc_ids or (),
        "id": id,
        "retrieved": prepared.retrieved,
        "citations": citations,
    }
    shared: dict[str, Any] = {
        "model": prepared.generator_config.model,
        "context": str(cfg.context),
        "sampler": prepared.uses_sampler,
        "answer_type": prepared.answer_type,
    }
    computed = generated.computation if generated is not None else None
    if computed is not None:
        shared.update(
            expression=computed.expression, computed=computed.value, compute_note=computed.note
        )
    if generated is None:
        now = time.perf_counter()
        elapsed = (now - prepared.started) * 1000
        stats = AnswerStats(stages=prepared.stages, ttft_ms=elapsed, total_ms=elapsed, **shared)
        short = NOT_ANSWERABLE if prepared.answer_type else ""
        return Answer(text=NOT_ANSWERABLE, short=short, stats=stats, not_answerable=True, **common)
    result = generated.generation
    kept = generated.urag_kept
    stats = AnswerStats(
        stages=(*prepared.stages, *generated.stages),
        prompt_tokens=result.prompt_tokens,
        new_tokens=result.new_tokens,
        ttft_ms=((generated.first_token or generated.finished) - prepared.started) * 1000,
        prefill_ms=result.prefill_s * 1000,
        decode_ms=result.decode_s * 1000,
        tokens_per_s=result.decode_tokens_per_s,
        total_ms=(time.perf_counter() - prepared.started) * 1000,
        stop_reason=str(result.stop_reason),
        urag_kept=kept,
        urag_pages=tuple(sorted({prepared.items[n - 1].page for n in kept})),
        refrag_ratio=generated.refrag_ratio,
        refrag_compressed=generated.refrag_compressed,
        answerability=generated.answerability,
        **shared,
    )
    declined = _declines(generated)
    text = NOT_ANSWERABLE if declined else generated.text
    return Answer(
        text=text,
        short=_short(prepared, text, computed),
        stats=stats,
        not_answerable=declined,
        **common,
    )


def _short(prepared: Prepared, text: str, computed: Computation | None) -> str:
    """The answer cut to its inferred type ("" with typed answers off)."""
    if not prepared.answer_type:
        return ""
    if computed is not None and computed.ok and text != NOT_ANSWERABLE:
        return computed.value
    return short_answer(text, AnswerType(prepared.answer_type), prepared.question)
