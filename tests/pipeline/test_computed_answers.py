"""Typed and computed answers through the whole question flow, on the sample guide (its Table 1
states a chunk size of 160 tokens and 20 retrieved chunks), with a scripted tiny generator."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from models.config import EncoderConfig, GeneratorConfig, SamplerConfig
from models.generator import Generation, GenerationStream, Generator, StopReason, load_generator
from pipeline.answering.answer import Answer, Answerer
from pipeline.answering.answer_types import COMPUTE_INSTRUCTION
from pipeline.config import AnswerConfig, ChunkConfig, IngestConfig, OcrMode, ParseConfig
from pipeline.ingestion.ingest import ingest
from pipeline.library.search import LibraryIndex
from retrieval.config import FusionConfig, RetrievalConfig
from storage import Block, StorageConfig, open_library

BM25_ONLY = RetrievalConfig(mode="bm25", fusion=FusionConfig(dense_weight=0, splade_weight=0))
# The lever is off by default (BENCHMARKS); these tests are about it, so it is on.
FAST = AnswerConfig(max_new_tokens=8, compute=True, sampler=SamplerConfig(image_features=False))
RATIO = "What is the ratio of the chunk size to the number of retrieved chunks?"


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, sample_pdf: Path):
    root = tmp_path_factory.mktemp("computed-lib")
    library = open_library(StorageConfig(library=root / "lib"))
    index = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    (result,) = ingest(
        [sample_pdf], library, parse_config=ParseConfig(ocr=OcrMode.NEVER),
        chunk_config=ChunkConfig(), ingest_config=IngestConfig(workers=1), index=index,
    )  # fmt: skip
    yield library, index, result.doc_id
    library.close()


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir: Path) -> Generator:
    return load_generator(GeneratorConfig(model=str(tiny_lm_dir), device="cpu"))


class Scripted(Generator):
    """The tiny model's tokenizer and prompt rendering; replies chosen by the test from the
    prompt's text (one reply for the expression prompt, another for the answer prompt)."""

    def __init__(self, base: Generator, reply: Callable[[str], str]) -> None:
        super().__init__(base.model, base.tokenizer, base.config, processor=base.processor)
        self.reply = reply
        self.prompts: list[str] = []

    def stream(self, prompt, **_kwargs) -> GenerationStream:
        inputs = self.encode(prompt)
        self.prompts.append(inputs.text)
        text = self.reply(inputs.text)

        def run():
            yield text
            return Generation(text, StopReason.EOS, inputs.num_tokens, 3, 0.01, 0.01, 0.01)

        return GenerationStream(run())


def _ask(lib, generator: Generator, encoder, question: str, **changes) -> Answer:
    library, index, doc = lib
    config = FAST.model_copy(update=changes)
    answerer = Answerer(
        library, index, config, GeneratorConfig(model="tiny"),
        load=lambda _config, cache_dir: generator, text_encoder=encoder,
    )  # fmt: skip
    return answerer.ask(question, doc_ids=[doc])


def _replies(expression: str, answer: str) -> Callable[[str], str]:
    return lambda text: expression if COMPUTE_INSTRUCTION in text else answer


def test_a_computed_answer_is_the_value_cited_to_its_operands(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, _replies("Expression: 160 / 20", "7 [1]"))
    answer = _ask(lib, scripted, bow_encoder, RATIO)
    assert len(scripted.prompts) == 1  # the expression answered: no second pass
    assert answer.short == "8" and answer.plain.startswith("8 (computed: 160 / 20)")
    stats = answer.stats
    assert stats.answer_type == "number" and stats.expression == "160 / 20"
    assert stats.computed == "8" and stats.compute_note == ""
    assert stats.stage("compute").kept_items == 1
    (citation,) = answer.citations  # both operands sit in Table 1's block
    with lib[0].sessions() as session:
        block = session.get(Block, citation.block_id)
    assert block.kind == "table" and "160" in block.text and "20" in block.text
    assert citation.how == "cited" and citation.page == 2


@pytest.mark.parametrize(
    ("reply", "note"),
    [
        ("Expression: 999 / 20", "operands not in the evidence: 999"),
        ("Expression: __import__('os')", "refused: not arithmetic"),
        ("I think it is eight.", "the model wrote no expression"),
        ("Expression: 160", "no arithmetic: a single number"),
    ],
)
def test_a_failed_expression_falls_back_to_the_answer_and_says_why(
    lib, tiny, bow_encoder, reply, note
) -> None:
    scripted = Scripted(tiny, _replies(reply, "The ratio is 8 [1]."))
    answer = _ask(lib, scripted, bow_encoder, RATIO)
    assert len(scripted.prompts) == 2
    assert answer.short == "8" and answer.text == "The ratio is 8 [1]."
    assert answer.stats.compute_note.startswith(note) and answer.stats.computed == ""
    assert answer.stats.stage("compute").kept_items == 0


def test_the_prompt_asks_for_the_type_after_the_question(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, lambda _text: "160 tokens [1]")
    answer = _ask(lib, scripted, bow_encoder, "How many tokens is the chunk size?")
    (prompt,) = scripted.prompts
    assert re.search(
        r"Question: How many tokens is the chunk size\?\nAnswer with a single integer\.", prompt
    )
    assert answer.short == "160" and answer.stats.answer_type == "integer"
    assert answer.stats.stage("compute") is None


def test_switched_off_the_question_is_asked_as_before(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, lambda _text: "160 tokens [1]")
    answer = _ask(lib, scripted, bow_encoder, RATIO, typed_answers=False, compute=False)
    (prompt,) = scripted.prompts
    assert "Answer with" not in prompt and COMPUTE_INSTRUCTION not in prompt
    assert answer.short == "" and answer.stats.answer_type == "" and answer.stats.expression == ""


def test_typed_and_computed_fields_round_trip_through_json(lib, tiny, bow_encoder) -> None:
    scripted = Scripted(tiny, _replies("Expression: 160 / 20", "7"))
    answer = _ask(lib, scripted, bow_encoder, RATIO)
    again = Answer.from_dict(answer.to_dict())
    assert again == answer and again.short == "8" and again.stats.expression == "160 / 20"
