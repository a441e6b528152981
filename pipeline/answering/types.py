"""The answering flow's data: what an answer holds, what each stage kept, and the seam between
the stages (`Prepared`: the evidence and prompt of a question, before generation).

Every type here is plain data: `Answer.to_dict`/`from_dict` write and read answer files, and the
web app, the API and the research scripts read these fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.config import GeneratorConfig
from models.generator import Generation, Prompt
from pipeline.config import AnswerConfig, ContextMode

if TYPE_CHECKING:  # the search index (and its retrievers) is not needed to read an answer
    from pipeline.library.search import SearchHit

__all__ = [
    "MARKER",
    "Answer",
    "AnswerStats",
    "Answerability",
    "BlockRow",
    "Citation",
    "Computation",
    "EvidenceItem",
    "EvidenceRef",
    "Generated",
    "Prepared",
    "RetrievedChunk",
    "StageStats",
    "without_markers",
]

# `[3]` or `[2, 5]`: the evidence numbers an answer cites.
MARKER = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def without_markers(text: str) -> str:
    """`text` without its `[n]` citation markers, whitespace collapsed."""
    return re.sub(r"\s+", " ", MARKER.sub("", text)).strip()


# ------------------------------------------------------------------------------ the answer


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
class Answerability:
    """The answerability check of one answer (`AnswerConfig.answerability`).

    Attributes:
        score: The calibrated probability that the evidence answers the question.
        threshold: Below it the system declines.
        answerable: `score >= threshold`.
        verify_yes: The model's P(yes) / (P(yes) + P(no)) to "does the evidence state the
            answer?", asked after its draft.
        features: The decision's inputs by name (the verification's log-odds, retrieval scores).
        draft: The model's own answer; when the check declines, the answer says "Not
            answerable" and the draft is kept here for the reader.
    """

    score: float
    threshold: float
    answerable: bool
    verify_yes: float
    features: dict[str, float]
    draft: str


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
        answer_type: The answer type inferred from the question (`AnswerConfig.typed_answers`;
            "" when off): integer, number, list, yes/no, string or free text.
        expression: With a computed answer tried, the arithmetic expression the model wrote.
        computed: Its value as answered ("" when it was not evaluated).
        compute_note: Why a computed answer fell back to the normal one ("" when it did not).
        urag_kept: With URaG on, the evidence numbers `[n]` the deep layers read.
        urag_pages: With URaG on, the pages of those items.
        refrag_ratio: With REFRAG on, prompt positions without compression / with it (1: off).
        refrag_compressed: With REFRAG on, per evidence item [n], how many of its chunks the
            model read as one vector each (the item, its page and regions stay citable).
        answerability: With the answerability check on, its score, decision and the draft.
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
    answer_type: str = ""
    expression: str = ""
    computed: str = ""
    compute_note: str = ""
    urag_kept: tuple[int, ...] = ()
    urag_pages: tuple[int, ...] = ()
    refrag_ratio: float = 1.0
    refrag_compressed: tuple[int, ...] = ()
    answerability: Answerability | None = None

    def stage(self, name: str) -> StageStats | None:
        """The stats of the named stage, or None."""
        return next((s for s in self.stages if s.name == name), None)


@dataclass(frozen=True)
class Answer:
    """An answer with its citations, evidence and costs; or the error that prevented it.

    Attributes:
        question: The question as asked.
        text: The answer as generated (with any `[n]` markers), or "Not answerable".
        short: The answer cut to its inferred type ("1874", "['a', 'b']", "Yes"), what
            `folio eval qa` scores; "" when typed answers are off (then `plain` is scored).
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
    short: str = ""
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
        return without_markers(self.text)

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
                short=data.get("short", ""),
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
                        "answerability": _answerability(stats.get("answerability")),
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


def _answerability(data: Mapping[str, Any] | None) -> Answerability | None:
    """An `Answerability` read back from `Answer.to_dict` (None stays None)."""
    return None if data is None else Answerability(**{**data, "features": dict(data["features"])})


# ------------------------------------------------------------------------ between the stages


@dataclass(frozen=True)
class BlockRow:
    """A stored block as plain data (read once, used by the prompt and the citations)."""

    id: int
    doc_id: str
    page: int
    kind: str
    bbox: tuple[float, float, float, float]
    text: str
    reading_order: int
    asset: Path | None
    caption_of: int | None


@dataclass(frozen=True)
class EvidenceItem:
    """One numbered evidence item: blocks of one page, as the evidence stage chose them.

    Attributes:
        doc_id: Document id.
        page: 1-based page.
        kind: text, figure or table.
        blocks: Its stored blocks, in reading order.
        text: Its text before screening and quoting.
        score: Sampler similarity, or retrieval score without the sampler (0 for first pages).
        rank: Its place by score (0: best); the attribution prefers better-ranked items.
        tokens: Its tokens in the answering model's tokenizer.
        image: The figure image a vision-language model reads, if any.
        positions: Its blocks' positions in their page's reading order (sampled items only).
    """

    doc_id: str
    page: int
    kind: str
    blocks: tuple[BlockRow, ...]
    text: str
    score: float
    rank: int = 0
    tokens: int = 0
    image: Path | None = None
    positions: tuple[int, ...] = ()


@dataclass(frozen=True)
class Prepared:
    """A question made ready for the model: its documents, evidence and prompt.

    `Answerer.prepare` builds it; `Answerer.generate` and `Answerer.cite` take it.

    Attributes:
        question: The question as asked.
        config: The answer settings of this request.
        generator_config: The generator of this request.
        doc_ids: The resolved documents (None: the whole of the owner's library).
        hits: The chunks retrieval returned, best first (empty unless the context is
            `retrieved`).
        items: The evidence items, numbered from 1 in this order.
        texts: Each item's text as the model reads it (screened, quoted as data).
        file_names: File name of each document the items come from.
        prompt: The rendered prompt; None when the context found no evidence.
        stages: Stats of the stages run so far (retrieve ... screen).
        started: `time.perf_counter()` when the question arrived (times the whole answer).
        answer_type: The inferred answer type ("" when typed answers are off).
        compute_prompt: The prompt that asks for an arithmetic expression, for a question that
            needs arithmetic (None: answer normally).
    """

    question: str
    config: AnswerConfig
    generator_config: GeneratorConfig
    doc_ids: tuple[str, ...] | None
    hits: tuple[SearchHit, ...]
    items: tuple[EvidenceItem, ...]
    texts: tuple[str, ...]
    file_names: Mapping[str, str]
    prompt: Prompt | None
    stages: tuple[StageStats, ...]
    started: float
    answer_type: str = ""
    compute_prompt: Prompt | None = None

    @property
    def answerable(self) -> bool:
        """Whether there is something to ask the model (evidence, or a context of none)."""
        return self.prompt is not None

    @property
    def retrieved(self) -> tuple[RetrievedChunk, ...]:
        """The retrieved hits as `Answer.retrieved` holds them."""
        return tuple(
            RetrievedChunk(h.doc_id, h.file_name, h.page, float(h.score), h.text)
            for h in self.hits
        )

    @property
    def evidence(self) -> tuple[EvidenceRef, ...]:
        """The numbered evidence as `Answer.evidence` holds it."""
        return tuple(
            EvidenceRef(
                number=n,
                doc_id=item.doc_id,
                file_name=self.file_names.get(item.doc_id, ""),
                page=item.page,
                block_ids=tuple(b.id for b in item.blocks),
                kind=item.kind,
                score=round(float(item.score), 4),
                tokens=item.tokens,
                text=text,
                image=str(item.image) if item.image is not None else None,
            )
            for n, (item, text) in enumerate(zip(self.items, self.texts, strict=True), start=1)
        )

    @property
    def uses_sampler(self) -> bool:
        """Whether the WuKong sampler chose the evidence."""
        return self.config.use_sampler and self.config.context is ContextMode.RETRIEVED


@dataclass(frozen=True)
class Computation:
    """A computed answer tried for a question that needs arithmetic (`AnswerConfig.compute`).

    Attributes:
        expression: The arithmetic expression the model wrote ("" when it wrote none).
        value: Its value as answered ("" when it was not evaluated).
        note: Why the normal answer was given instead ("" when the value was).
        sources: The evidence numbers [n] that hold the operands.
        answer: The answer's text: the value, its sources' markers and the expression.
    """

    expression: str
    value: str = ""
    note: str = ""
    sources: tuple[int, ...] = ()
    answer: str = ""

    @property
    def ok(self) -> bool:
        """Whether the value answers the question."""
        return bool(self.value)


@dataclass(frozen=True)
class Generated:
    """What generation produced for a `Prepared` question.

    Attributes:
        generation: The model's output and timings.
        stages: Its stages' stats (refrag | urag, prompt, generate).
        first_token: `time.perf_counter()` at the first text delta (None: no text).
        finished: `time.perf_counter()` when the model stopped.
        urag_kept: With URaG on, the evidence numbers the deep layers read.
        refrag_ratio: With REFRAG on, prompt positions without compression / with it.
        refrag_compressed: With REFRAG on, per evidence item, its chunks read as one vector.
        computation: The computed answer tried (None: the question needs no arithmetic).
        answerability: The answerability check of the draft (None: switched off).
    """

    generation: Generation
    stages: tuple[StageStats, ...]
    first_token: float | None
    finished: float
    urag_kept: tuple[int, ...] = ()
    refrag_ratio: float = 1.0
    refrag_compressed: tuple[int, ...] = ()
    answerability: Answerability | None = None

    computation: Computation | None = None

    @property
    def text(self) -> str:
        """The answer as generated, without surrounding spaces (a computed answer's text when
        its expression was evaluated)."""
        if self.computation is not None and self.computation.ok:
            return self.computation.answer
        return self.generation.text.strip()
