"""The question flow on the sample guide: evidence per context mode, budget, citations, VLM path.

Generation mechanics run on a tiny random Qwen2; citation tests use a scripted generator (the
same tiny model with a fixed reply) so that the reply, and so the cited region, is known.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymupdf
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from models.config import EncoderConfig, GeneratorConfig, SamplerConfig, UragConfig
from models.generator import Generation, GenerationStream, Generator, StopReason, load_generator
from pipeline.answering.answer import Answer, Answerer, resolve_options
from pipeline.answering.prompt import build_prompt, read_texts
from pipeline.config import (
    AnswerConfig,
    ChunkConfig,
    ContextMode,
    IngestConfig,
    OcrMode,
    ParseConfig,
)
from pipeline.ingestion.ingest import ingest
from pipeline.library.documents import resolve_documents
from pipeline.library.search import LibraryIndex
from retrieval.config import FusionConfig, RetrievalConfig
from storage import Block, StorageConfig, open_library

BM25_ONLY = RetrievalConfig(mode="bm25", fusion=FusionConfig(dense_weight=0, splade_weight=0))
QUESTION = "What is the default chunk size in tokens?"
FAST = AnswerConfig(max_new_tokens=6, sampler=SamplerConfig(image_features=False))


def _other_pdf(path: Path) -> Path:
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_textbox(
        pymupdf.Rect(72, 72, 520, 300),
        "Bird migration notes. Swallows leave in September and return in April. "
        "The chunk of sky they cross is large.",
        fontsize=11,
    )
    doc.save(path)
    doc.close()
    return path


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, sample_pdf: Path):
    """A library holding the sample guide and a one-page unrelated note (BM25 index)."""
    root = tmp_path_factory.mktemp("answer-lib")
    library = open_library(StorageConfig(library=root / "lib"))
    index = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    results = ingest(
        [sample_pdf, _other_pdf(root / "birds.pdf")],
        library,
        parse_config=ParseConfig(ocr=OcrMode.NEVER),
        chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(workers=1),
        index=index,
    )
    assert [r.status for r in results] == ["added", "added"]
    yield library, index, results[0].doc_id, results[1].doc_id
    library.close()


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir: Path) -> Generator:
    return load_generator(GeneratorConfig(model=str(tiny_lm_dir), device="cpu"))


class Scripted(Generator):
    """The tiny model's tokenizer and prompt rendering, with a reply chosen by the test."""

    def __init__(self, base: Generator, reply: Callable[[str], str] | str) -> None:
        super().__init__(base.model, base.tokenizer, base.config, processor=base.processor)
        self.reply = reply if callable(reply) else (lambda _text: reply)
        self.prompts: list[str] = []

    def stream(self, prompt, **_kwargs) -> GenerationStream:
        inputs = self.encode(prompt)
        self.prompts.append(inputs.text)
        text = self.reply(inputs.text)

        def run():
            words = text.split(" ")
            for i, word in enumerate(words):
                yield word if i == 0 else " " + word
            return Generation(
                text, StopReason.EOS, inputs.num_tokens, len(words) + 1, 0.01, 0.01, 0.01
            )

        return GenerationStream(run())


def _answerer(lib, generator: Generator, bow_encoder, config: AnswerConfig = FAST) -> Answerer:
    library, index, *_ = lib
    return Answerer(
        library,
        index,
        config,
        GeneratorConfig(model="tiny"),
        load=lambda _config, cache_dir: generator,
        text_encoder=bow_encoder,
    )


def _evidence_number(prompt_text: str, needle: str) -> int:
    """The number of the evidence item whose text (all its lines) contains `needle`."""
    items = re.split(r"^\[(\d+)\] ", prompt_text, flags=re.MULTILINE)
    for number, text in zip(items[1::2], items[2::2], strict=True):
        if needle in text:
            return int(number)
    raise AssertionError(f"{needle!r} not in any evidence item")


def _block(lib, block_id: int) -> Block:
    with lib[0].sessions() as session:
        return session.get(Block, block_id)


# ------------------------------------------------------------------------- evidence paths


def test_stream_yields_deltas_then_an_answer_with_stage_stats(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    parts = list(answerer.stream(QUESTION, doc_ids=[lib[2]]))
    *deltas, answer = parts
    assert isinstance(answer, Answer) and all(isinstance(d, str) for d in deltas)
    if not answer.not_answerable:
        assert "".join(deltas) == answer.text
    stats = answer.stats
    assert [s.name for s in stats.stages] == [
        "retrieve",
        "candidates",
        "sample",
        "screen",
        "prompt",
        "generate",
    ]
    screen = stats.stage("screen")
    assert screen.kept_items == screen.total_items > 0  # nothing in the sample addresses the model
    sample = stats.stage("sample")
    assert 0 < sample.kept_items <= sample.total_items
    assert sample.kept_tokens <= FAST.token_budget and sample.kept_tokens <= sample.total_tokens
    assert stats.stage("prompt").kept_tokens == sum(e.tokens for e in answer.evidence)
    assert stats.prompt_tokens == stats.stage("prompt").total_tokens > sample.kept_tokens
    assert 0 < stats.new_tokens <= FAST.max_new_tokens
    assert stats.ttft_ms > 0 and stats.total_ms >= stats.ttft_ms and stats.sampler
    assert answer.doc_ids == (lib[2],)
    assert {e.doc_id for e in answer.evidence} == {lib[2]}
    assert [e.number for e in answer.evidence] == list(range(1, len(answer.evidence) + 1))


def test_sampler_respects_the_budget_and_reading_order(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    config = FAST.model_copy(update={"token_budget": 120})
    answer = answerer.ask(QUESTION, doc_ids=[lib[2]], config=config)
    assert answer.evidence and sum(e.tokens for e in answer.evidence) <= 120
    counted = [
        len(tiny.tokenizer(e.text, add_special_tokens=False)["input_ids"]) for e in answer.evidence
    ]
    assert counted == [e.tokens for e in answer.evidence]  # the model's own tokens
    order = [(e.page, e.block_ids[0]) for e in answer.evidence]
    assert order == sorted(order)  # block ids are assigned in page and reading order
    # Every evidence block is a real block of the document, on the page the evidence names.
    for e in answer.evidence:
        for block_id in e.block_ids:
            block = _block(lib, block_id)
            assert (block.doc_id, block.page) == (e.doc_id, e.page)


def test_without_the_sampler_chunks_go_in_rank_order(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    config = FAST.model_copy(update={"use_sampler": False, "token_budget": 400})
    answer = answerer.ask(QUESTION, doc_ids=[lib[2]], config=config)
    hits = lib[1].search(QUESTION, k=config.k, doc_ids=[lib[2]])
    assert [e.block_ids for e in answer.evidence] == [h.block_ids for h in hits][
        : len(answer.evidence)
    ]
    assert [s.name for s in answer.stats.stages][:2] == ["retrieve", "budget"]
    assert sum(e.tokens for e in answer.evidence) <= 400 and not answer.stats.sampler


def test_first_pages_fill_the_same_budget_from_page_one(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    config = FAST.model_copy(update={"context": ContextMode.FIRST_PAGES, "token_budget": 300})
    answer = answerer.ask(QUESTION, doc_ids=["folio-guide.pdf"], config=config)  # by file name
    assert [e.page for e in answer.evidence] == [1]
    assert answer.evidence[0].tokens <= 300 and answer.evidence[0].text.endswith("…")
    assert answer.stats.stage("first-pages").kept_tokens == answer.evidence[0].tokens
    with pytest.raises(ValueError, match="needs the document"):
        answerer.ask(QUESTION, config=config)  # two documents in the library


def test_no_context_sends_the_question_alone(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, "I do not know")
    answerer = _answerer(lib, scripted, bow_encoder)
    answer = answerer.ask(QUESTION, config=FAST.model_copy(update={"context": ContextMode.NONE}))
    assert answer.evidence == () and answer.citations == ()
    assert "Evidence:" not in scripted.prompts[0] and QUESTION in scripted.prompts[0]


def test_question_first_states_the_question_before_the_evidence_too(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, "I do not know")
    answerer = _answerer(lib, scripted, bow_encoder)
    answerer.ask(QUESTION, doc_ids=[lib[2]])
    answerer.ask(
        QUESTION, doc_ids=[lib[2]], config=FAST.model_copy(update={"question_first": True})
    )
    last, first = scripted.prompts
    assert last.count(QUESTION) == 1 and last.index("Evidence:") < last.index(QUESTION)
    assert first.count(QUESTION) == 2
    assert first.index(QUESTION) < first.index("Evidence:") < first.rindex(QUESTION)


# ------------------------------------------------------------------------------- citations


def test_a_cited_number_maps_to_the_block_on_its_page(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, lambda text: f"160 [{_evidence_number(text, 'Chunk size')}]")
    answer = _answerer(lib, scripted, bow_encoder).ask(QUESTION, doc_ids=[lib[2]])
    assert answer.text.startswith("160 [") and answer.plain == "160"
    (citation,) = answer.citations
    block = _block(lib, citation.block_id)
    assert block.kind == "table" and block.page == citation.page == 2
    assert citation.bbox == pytest.approx(block.bbox)
    assert citation.file_name == "folio-guide.pdf" and citation.doc_id == lib[2]
    assert citation.how == "cited" and "160" in citation.quote
    assert answer.evidence[citation.evidence - 1].page == 2


def test_an_uncited_phrase_is_attributed_where_it_appears(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, "more than ten pages per second")
    answer = _answerer(lib, scripted, bow_encoder).ask(
        "How fast does the parser process born-digital pages on a laptop?", doc_ids=[lib[2]]
    )
    (citation,) = answer.citations
    assert citation.how == "attributed" and citation.page == 1
    assert "more than ten pages per second" in _block(lib, citation.block_id).text
    assert "more than ten" in citation.quote and len(citation.quote) <= 302


def test_an_uncited_sentence_is_attributed_to_the_most_similar_evidence(
    lib, tiny, bow_encoder
) -> None:
    scripted = Scripted(tiny, "The generator prefills roughly 140 tokens each second")
    answer = _answerer(lib, scripted, bow_encoder).ask(
        "How many tokens per second does the default generator prefill?", doc_ids=[lib[2]]
    )
    (citation,) = answer.citations
    assert citation.how == "attributed" and citation.page == 1
    assert "140 tokens per second" in _block(lib, citation.block_id).text


def test_declining_cites_nothing(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, "Not answerable.")
    answer = _answerer(lib, scripted, bow_encoder).ask(QUESTION, doc_ids=[lib[2]])
    assert answer.not_answerable and answer.text == "Not answerable" and answer.citations == ()
    # Nothing retrieved: declined without running the model.
    quiet = Scripted(tiny, "42")
    none = _answerer(lib, quiet, bow_encoder).ask("zyxwv qqqq?", doc_ids=[lib[2]])
    assert none.not_answerable and quiet.prompts == [] and none.stats.new_tokens == 0


def test_bad_requests_raise(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    with pytest.raises(ValueError, match="question"):
        answerer.ask("   ")
    with pytest.raises(LookupError, match="no document"):
        answerer.ask(QUESTION, doc_ids=["ffff0000"])


def test_urag_keeps_the_best_items_and_reports_their_pages(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    off = answerer.ask(QUESTION, doc_ids=[lib[2]])
    assert len(off.evidence) > 1 and off.stats.stage("urag") is None and not off.stats.urag_kept
    keep_all = FAST.model_copy(
        update={"use_urag": True, "urag": UragConfig(layer=0, keep=len(off.evidence))}
    )
    same = answerer.ask(QUESTION, doc_ids=[lib[2]], config=keep_all)
    assert same.text == off.text  # nothing dropped: the same answer
    assert same.stats.urag_kept == tuple(range(1, len(off.evidence) + 1))
    one = FAST.model_copy(update={"use_urag": True, "urag": UragConfig(layer=0, keep=1)})
    answer = answerer.ask(QUESTION, doc_ids=[lib[2]], config=one)
    stats = answer.stats
    assert [s.name for s in stats.stages][-3:] == ["urag", "prompt", "generate"]
    urag = stats.stage("urag")
    assert (urag.kept_items, urag.total_items) == (1, len(answer.evidence))
    assert urag.kept_tokens < urag.total_tokens and urag.ms > 0
    (kept,) = stats.urag_kept
    assert stats.urag_pages == (answer.evidence[kept - 1].page,)
    # the tiny model cites no [n]: the answer is attributed, and only to what it read
    assert answer.citations and {c.how for c in answer.citations} == {"attributed"}
    assert {c.evidence for c in answer.citations} == {kept}
    again = Answer.from_dict(json.loads(json.dumps(answer.to_dict())))
    assert again == answer


class Meeting(Generator):
    """The tiny model, whose `stream` waits until two questions both reach generation."""

    def __init__(self, base: Generator, barrier: threading.Barrier) -> None:
        super().__init__(base.model, base.tokenizer, base.config, processor=base.processor)
        self.barrier = barrier

    def stream(self, prompt, **kwargs) -> GenerationStream:
        self.barrier.wait(timeout=60)
        return super().stream(prompt, **kwargs)


def test_concurrent_urag_questions_each_keep_their_own_selection(lib, tiny, bow_encoder) -> None:
    one = FAST.model_copy(update={"use_urag": True, "urag": UragConfig(layer=0, keep=1)})
    questions = [QUESTION, "When do swallows leave and return?"]
    alone = [_answerer(lib, tiny, bow_encoder, one).ask(q) for q in questions]
    assert alone[0].evidence != alone[1].evidence
    # Both questions pass URaG's binding before either prefills: a selection kept on the shared
    # runner would be overwritten by the other question.
    answerer = _answerer(lib, Meeting(tiny, threading.Barrier(2)), bow_encoder, one)
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(answerer.ask, questions))
    for solo, both in zip(alone, together, strict=True):
        assert both.stats.urag_kept == solo.stats.urag_kept and both.stats.urag_kept
        assert (both.text, both.evidence, both.citations) == (
            solo.text,
            solo.evidence,
            solo.citations,
        )
        assert both.stats.stage("urag").kept_tokens == solo.stats.stage("urag").kept_tokens


def test_answers_round_trip_through_json(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, lambda text: f"160 [{_evidence_number(text, 'Chunk size')}]")
    answer = _answerer(lib, scripted, bow_encoder).ask(QUESTION, doc_ids=[lib[2]])
    again = Answer.from_dict(json.loads(json.dumps(answer.to_dict())))
    assert again == answer
    with pytest.raises(ValueError, match="not an answer"):
        Answer.from_dict({"text": "x"})


def test_progress_names_each_stage_as_it_starts(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    seen: list[str] = []
    answer = answerer.ask(QUESTION, doc_ids=[lib[2]], on_progress=seen.append)
    reading = f"Reading {answer.stats.prompt_tokens:,} prompt tokens…"
    assert seen[:4] == [
        "Retrieving from the library…",
        "Sampling evidence (WuKong)…",
        reading,
        "Writing the answer…",
    ]
    urag = FAST.model_copy(update={"use_urag": True, "urag": UragConfig(layer=0, keep=1)})
    seen.clear()
    pruned = answerer.ask(QUESTION, doc_ids=[lib[2]], config=urag, on_progress=seen.append)
    assert f"Reading {pruned.stats.prompt_tokens:,} prompt tokens…" in seen
    assert pruned.stats.urag_kept  # announcing the prefill keeps URaG's selection


def test_a_failing_progress_callback_does_not_change_the_answer(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    calls: list[str] = []

    def broken(status: str) -> None:
        calls.append(status)
        raise RuntimeError("display gone")

    plain = answerer.ask(QUESTION, doc_ids=[lib[2]])
    answer = answerer.ask(QUESTION, doc_ids=[lib[2]], on_progress=broken)
    assert len(calls) >= 4 and (answer.text, answer.citations) == (plain.text, plain.citations)


def test_the_answer_keeps_its_retrieved_chunks_in_rank_order(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    answer = answerer.ask(QUESTION, doc_ids=[lib[2]])
    hits = lib[1].search(QUESTION, k=FAST.k, doc_ids=[lib[2]])
    assert [(r.doc_id, r.page, r.score, r.text) for r in answer.retrieved] == [
        (h.doc_id, h.page, h.score, h.text) for h in hits
    ]
    assert {r.file_name for r in answer.retrieved} == {"folio-guide.pdf"}
    data = json.loads(json.dumps(answer.to_dict()))
    assert Answer.from_dict(data) == answer
    del data["retrieved"]  # written before the field existed
    assert Answer.from_dict(data).retrieved == ()
    first = FAST.model_copy(update={"context": ContextMode.FIRST_PAGES})
    assert answerer.ask(QUESTION, doc_ids=[lib[2]], config=first).retrieved == ()


def test_prepare_generate_and_cite_compose_to_the_streamed_answer(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    prepared = answerer.prepare(QUESTION, doc_ids=["folio-guide.pdf"])
    assert prepared.doc_ids == (lib[2],) and prepared.answerable
    assert [s.name for s in prepared.stages] == ["retrieve", "candidates", "sample", "screen"]
    # The public prompt functions rebuild it from the items (research scripts edit items first).
    texts, _ = read_texts(prepared.items, prepared.config, tiny)
    assert tuple(texts) == prepared.texts
    from pipeline.answering.answer_types import AnswerType, type_instruction

    ask = type_instruction(AnswerType(prepared.answer_type))  # the typed-answer line (on)
    rebuilt = build_prompt(
        QUESTION, prepared.items, texts, prepared.file_names, FAST, tiny, ask=ask
    )
    assert tiny.render(rebuilt) == tiny.render(prepared.prompt)
    run = answerer.generate(prepared)
    deltas = list(run)
    generated = run.result
    assert [s.name for s in generated.stages] == ["prompt", "generate"]
    assert "".join(deltas).strip() == generated.text
    answer = answerer.ask(QUESTION, doc_ids=[lib[2]])
    assert (prepared.evidence, prepared.retrieved) == (answer.evidence, answer.retrieved)
    assert answerer.cite(prepared, generated.text) == answer.citations
    assert answerer.cite(prepared, "Not answerable") == ()
    none = answerer.prepare("zzqx qqzz", doc_ids=[lib[3]])  # nothing retrieved
    assert not none.answerable and none.items == ()
    with pytest.raises(ValueError, match="nothing to generate"):
        answerer.generate(none)


def test_documents_resolve_by_id_prefix_or_file_name_in_order(lib) -> None:
    library, _index, guide, birds = lib
    assert resolve_documents(library, ["birds.pdf", guide[:10], guide]) == [birds, guide]
    assert resolve_documents(library, guide) == [guide]  # one name as a plain string
    with pytest.raises(LookupError, match="no document with id or file name 'nope.pdf'"):
        resolve_documents(library, ["nope.pdf"])


def test_urag_and_refrag_together_fail_when_configured() -> None:
    with pytest.raises(ValidationError, match="URaG and REFRAG are alternatives"):
        AnswerConfig(use_urag=True, use_refrag=True)
    with pytest.raises(ValueError, match="alternatives"):
        resolve_options(AnswerConfig(), GeneratorConfig(), use_urag=True, use_refrag=True)


def test_options_resolve_aliases_and_refuse_unknown_ones() -> None:
    answer, generator = resolve_options(
        AnswerConfig(), GeneratorConfig(), retrieval=False, sampler=False, budget=300, k=4,
        k_text=3, model="/models/big",
    )  # fmt: skip
    assert answer.context is ContextMode.FIRST_PAGES and not answer.use_sampler
    assert (answer.token_budget, answer.k, answer.sampler.k_text) == (300, 4, 3)
    assert generator.model == "/models/big"
    assert resolve_options(AnswerConfig(), GeneratorConfig(), k=None)[0] == AnswerConfig()
    with pytest.raises(TypeError, match="unknown answer option 'topk'"):
        resolve_options(AnswerConfig(), GeneratorConfig(), topk=3)


# ------------------------------------------------------------------------ vision-language


def test_a_vision_language_model_reads_the_selected_figures_as_images(
    lib, tiny_vlm_dir: Path, bow_encoder
) -> None:
    vlm = load_generator(GeneratorConfig(model=str(tiny_vlm_dir), device="cpu"))
    assert vlm.is_multimodal
    captured = []
    encode = vlm.encode

    def spy(prompt):
        captured.append(encode(prompt))
        return captured[-1]

    vlm.encode = spy  # type: ignore[method-assign]
    config = FAST.model_copy(
        update={"sampler": SamplerConfig(image_features=False, image_token_cost=64)}
    )
    answer = _answerer(lib, vlm, bow_encoder, config).ask(
        "What does Figure 1 show about the path of a question through the stages?",
        doc_ids=[lib[2]],
    )
    figures = [e for e in answer.evidence if e.image is not None]
    assert figures and all(e.kind in ("figure", "table") for e in figures)
    assert all(Path(e.image).is_file() for e in figures)
    with lib[0].sessions() as session:
        assets = {
            lib[0].asset_path(a)
            for a in session.scalars(select(Block.asset).where(Block.asset.is_not(None)))
        }
    assert {Path(e.image) for e in figures} <= assets
    (inputs,) = captured
    assert inputs.model_kwargs["pixel_values"].shape[0] == len(figures)
    # Each image is charged to the budget on top of its caption.
    assert all(e.tokens >= 64 for e in figures)


def test_stages_that_read_the_models_internals_run_on_torch() -> None:
    from models.config import GeneratorRuntime
    from pipeline.answering.cache import with_runtime_for

    auto = GeneratorConfig(runtime="auto")
    assert with_runtime_for(AnswerConfig(), auto) is auto  # resolved at load, not here
    for stage in ({"use_urag": True}, {"use_refrag": True}):
        chosen = with_runtime_for(AnswerConfig(**stage), auto)
        assert chosen.runtime is GeneratorRuntime.TORCH
    with pytest.raises(ValueError, match="--runtime torch"):
        with_runtime_for(AnswerConfig(use_urag=True), GeneratorConfig(runtime="openvino"))
    remote = GeneratorConfig(runtime="openai", base_url="http://127.0.0.1:9/v1", model="m")
    assert with_runtime_for(AnswerConfig(), remote) is remote
    with pytest.raises(ValueError, match="--no-answerability") as info:
        with_runtime_for(AnswerConfig(answerability=True), remote)
    assert "\n" not in str(info.value)


def test_the_runtime_is_a_per_request_option() -> None:
    from models.config import GeneratorRuntime

    _, generator = resolve_options(AnswerConfig(), GeneratorConfig(), runtime="torch")
    assert generator.runtime is GeneratorRuntime.TORCH
    with pytest.raises(ValueError, match="unknown generator runtime 'onnx'; use one of: auto"):
        resolve_options(AnswerConfig(), GeneratorConfig(), runtime="onnx")
