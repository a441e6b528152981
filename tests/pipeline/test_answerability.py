"""The answerability check (issue 23): the decision's arithmetic, and the check in the question
flow on a tiny random Qwen2 on torch: it reuses the answer's KV cache (only the follow-up turn
runs), a threshold of 1 turns the answer into "Not answerable" with the draft kept, the switch
turns it off, and the stats carry the score through `to_dict`/`from_dict`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from models.config import EncoderConfig, GeneratorConfig, SamplerConfig
from models.generator import Generator, load_generator
from pipeline.answering import answerability
from pipeline.answering.answer import Answer, Answerer
from pipeline.answering.answerability import (
    CALIBRATION_FILE,
    VERIFY_QUESTION,
    Calibration,
    decide,
    load_calibration,
    verify_log_odds,
)
from pipeline.config import AnswerConfig, ChunkConfig, IngestConfig, OcrMode, ParseConfig
from pipeline.evaluation.scoring import NOT_ANSWERABLE
from pipeline.ingestion.ingest import ingest
from pipeline.library.search import LibraryIndex
from retrieval.config import FusionConfig, RetrievalConfig
from storage import StorageConfig, open_library

BM25_ONLY = RetrievalConfig(mode="bm25", fusion=FusionConfig(dense_weight=0, splade_weight=0))
QUESTION = "What is the default chunk size in tokens?"
ON = AnswerConfig(max_new_tokens=6, sampler=SamplerConfig(image_features=False), answerability=True)
FIXED = Calibration({"verify_log_odds": 1.0, "top_hit": 0.5, "top_item": 0.0}, -0.2, 0.5, "test")


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, sample_pdf: Path):
    root = tmp_path_factory.mktemp("answerability-lib")
    library = open_library(StorageConfig(library=root / "lib"))
    index = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    results = ingest(
        [sample_pdf], library, parse_config=ParseConfig(ocr=OcrMode.NEVER),
        chunk_config=ChunkConfig(), ingest_config=IngestConfig(workers=1), index=index,
    )  # fmt: skip
    assert [r.status for r in results] == ["added"]
    yield library, index
    library.close()


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir: Path) -> Generator:
    return load_generator(GeneratorConfig(model=str(tiny_lm_dir), device="cpu"))


@pytest.fixture(autouse=True)
def fixed_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's decision uses these coefficients, not the shipped fit."""
    monkeypatch.setattr(answerability, "load_calibration", lambda: FIXED)


def _answerer(lib, generator: Generator, bow_encoder) -> Answerer:
    library, index = lib
    return Answerer(
        library, index, ON, GeneratorConfig(model="tiny"),
        load=lambda _config, cache_dir: generator, text_encoder=bow_encoder,
    )  # fmt: skip


# ------------------------------------------------------------------------------- decision


def test_the_decision_is_a_logistic_model_cut_at_the_threshold() -> None:
    features = {"verify_log_odds": 1.2, "top_hit": 0.8, "top_item": 0.3}
    z = -0.2 + 1.2 + 0.5 * 0.8
    decision = decide(features, FIXED, draft="42")
    assert decision.score == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-4)
    assert decision.answerable and decision.threshold == 0.5 and decision.draft == "42"
    assert decision.verify_yes == pytest.approx(1 / (1 + math.exp(-1.2)), abs=1e-4)
    assert not decide(features, FIXED, 0.95).answerable  # the setting overrides the fit's cut
    low = {"verify_log_odds": -3.0, "top_hit": 0.1, "top_item": 0.0}
    assert not decide(low, FIXED).answerable


def test_log_odds_sum_each_sides_spellings() -> None:
    yes, no = math.log(0.3), math.log(0.1)
    lo = verify_log_odds([yes, math.log(0.1), no, math.log(0.1)])
    assert lo == pytest.approx(math.log(0.4 / 0.2))


def test_the_shipped_calibration_loads_and_says_where_it_came_from() -> None:
    calibration = load_calibration(CALIBRATION_FILE)
    assert set(calibration.weights) == set(answerability.FEATURES)
    assert 0.0 < calibration.threshold < 1.0
    assert "train" in calibration.source


def test_a_broken_calibration_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not an answerability calibration"):
        load_calibration(bad)


# ------------------------------------------------------------------------------- the flow


def test_the_check_reuses_the_answer_cache_and_the_stats_carry_its_score(
    lib, tiny, bow_encoder
) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    config = ON.model_copy(update={"answerability_threshold": 0.0})
    answer = answerer.ask(QUESTION, config=config)
    check = answer.stats.answerability
    stage = answer.stats.stage("answerability")
    assert check is not None and stage is not None
    assert check.answerable and not answer.not_answerable
    assert 0.0 <= check.score <= 1.0 and 0.0 <= check.verify_yes <= 1.0
    assert set(check.features) == {"verify_log_odds", "top_hit", "top_item"}
    assert check.features["top_hit"] > 0
    # Only the follow-up turn ran: the prompt came from the answer's own KV cache.
    prepared = answerer.prepare(QUESTION, config=config)
    suffix = tiny.follow_up(prepared.prompt, check.draft, VERIFY_QUESTION)
    suffix_tokens = len(tiny.tokenizer(suffix, add_special_tokens=False)["input_ids"])
    assert stage.kept_tokens == suffix_tokens
    assert stage.total_tokens == answer.stats.prompt_tokens + suffix_tokens
    assert [s.name for s in answer.stats.stages][-2:] == ["generate", "answerability"]
    again = Answer.from_dict(answer.to_dict())
    assert again.stats.answerability == check


def test_below_the_threshold_the_answer_declines_and_keeps_the_draft(
    lib, tiny, bow_encoder
) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    kept = answerer.ask(QUESTION, config=ON.model_copy(update={"answerability_threshold": 0.0}))
    declined = answerer.ask(QUESTION, config=ON.model_copy(update={"answerability_threshold": 1.0}))
    assert declined.text == NOT_ANSWERABLE and declined.not_answerable
    assert declined.citations == ()
    assert declined.stats.answerability.draft == kept.stats.answerability.draft
    assert not declined.stats.answerability.answerable


def test_the_switch_turns_the_check_off(lib, tiny, bow_encoder) -> None:
    answerer = _answerer(lib, tiny, bow_encoder)
    answer = answerer.ask(QUESTION, config=ON.model_copy(update={"answerability": False}))
    assert answer.stats.answerability is None
    assert answer.stats.stage("answerability") is None
