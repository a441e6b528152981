"""WuKong sparse sampler: scoring, quotas, token budget, reading order, duplicates, images.

A bag-of-words fake encoder (tests/conftest.py) makes scores predictable; one test runs the real
EfficientNet-Lite0 duplicate check on rendered figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from models.config import SamplerConfig
from models.sampler import (
    Candidate,
    DropReason,
    EmbeddingCache,
    EvidenceSampler,
    estimate_tokens,
)

QUESTION = "What was the revenue of the company in 2023?"


def _candidates() -> list[Candidate]:
    texts = [
        (1, "heading", "2 Financial results"),
        (1, "text", "The revenue of the company in 2023 was 4.2 billion dollars."),
        (1, "text", "Employees enjoy the new cafeteria on the third floor."),
        (2, "text", "In 2022 the revenue of the company was 3.9 billion dollars."),
        (2, "table", "Table 2: The revenue of the company by year. | 2022 | 3.9 | | 2023 | 4.2 |"),
        (2, "figure", "Figure 3: Map with offices."),
        (3, "text", "The weather was mild and the river froze only once."),
        (3, "text", "7"),
    ]
    return [
        Candidate(id=i, kind=kind, text=text, page=page, reading_order=i)
        for i, (page, kind, text) in enumerate(texts)
    ]


@pytest.fixture
def sampler(bow_encoder) -> EvidenceSampler:
    return EvidenceSampler(SamplerConfig(k_text=2, k_image=1, image_features=False), bow_encoder)


def test_keeps_the_best_paragraphs_and_figures_in_reading_order(sampler: EvidenceSampler) -> None:
    candidates = _candidates()
    result = sampler.sample(QUESTION, candidates, token_budget=1000)
    kept = [item.candidate.id for item in result.kept]
    assert kept == [1, 3, 4]  # two paragraphs and the table, in reading order
    scores = sampler.score(QUESTION, candidates)
    assert [item.score for item in result.kept] == pytest.approx([scores[i] for i in kept])
    reasons = {d.candidate.id: d.reason for d in result.dropped}
    assert reasons[5] is DropReason.QUOTA  # k_image=1: the map loses to the revenue table
    assert reasons[7] is DropReason.EMPTY  # a page number
    assert set(reasons) | set(kept) == {c.id for c in candidates}
    dropped_scores = [d.score for d in result.dropped]
    assert dropped_scores == sorted(dropped_scores, reverse=True)


def test_token_budget_is_respected_and_a_long_item_is_cut_to_fit(bow_encoder) -> None:
    long = "The revenue of the company in 2023 " + "grew strongly in every region " * 60
    candidates = [
        Candidate(0, "text", long, 1, 0),
        Candidate(1, "text", "Revenue in 2023 of the company was high.", 1, 1),
    ]
    sampler = EvidenceSampler(SamplerConfig(k_text=5, min_item_tokens=10), bow_encoder)
    budget = 60
    result = sampler.sample(QUESTION, candidates, token_budget=budget)
    assert result.kept_tokens <= budget
    assert sum(item.tokens for item in result.kept) == result.kept_tokens
    assert all(item.tokens == estimate_tokens(item.text) for item in result.kept)
    cut = next(item for item in result.kept if item.candidate.id == 0)
    assert cut.truncated and cut.text.endswith("…") and long.startswith(cut.text[:-2])
    assert result.total_tokens == sum(estimate_tokens(c.text) for c in candidates)


def test_an_item_that_does_not_fit_is_skipped_for_smaller_ones(bow_encoder) -> None:
    candidates = [
        Candidate(0, "text", "revenue company 2023 " * 30, 1, 0),
        Candidate(1, "text", "The company revenue.", 1, 1),
    ]
    sampler = EvidenceSampler(SamplerConfig(k_text=5, min_item_tokens=50), bow_encoder)
    result = sampler.sample(QUESTION, candidates, token_budget=20)
    assert [item.candidate.id for item in result.kept] == [1]
    assert result.dropped[0].candidate.id == 0 and result.dropped[0].reason is DropReason.BUDGET


def test_a_zero_budget_keeps_nothing(sampler: EvidenceSampler) -> None:
    result = sampler.sample(QUESTION, _candidates(), token_budget=0)
    assert result.kept == () and result.kept_tokens == 0


def test_repeated_text_is_kept_once(bow_encoder) -> None:
    footer = "Revenue report of the company, 2023 edition"
    candidates = [Candidate(i, "text", footer, page=i + 1, reading_order=0) for i in range(3)]
    sampler = EvidenceSampler(SamplerConfig(k_text=3), bow_encoder)
    result = sampler.sample(QUESTION, candidates, token_budget=500)
    assert [item.candidate.page for item in result.kept] == [1]
    assert [d.reason for d in result.dropped] == [DropReason.DUPLICATE] * 2


def test_documents_are_ordered_by_rank_then_page(bow_encoder) -> None:
    candidates = [
        Candidate(0, "text", "revenue of the company 2023 in b", 5, 0, doc="b", doc_rank=1),
        Candidate(1, "text", "revenue of the company 2023 in a", 9, 0, doc="a", doc_rank=0),
        Candidate(2, "text", "revenue of the company 2023 again in a", 2, 3, doc="a", doc_rank=0),
    ]
    result = EvidenceSampler(SamplerConfig(k_text=3), bow_encoder).sample(
        QUESTION, candidates, token_budget=500
    )
    assert [item.candidate.id for item in result.kept] == [2, 1, 0]


def test_search_text_scores_a_figure_without_a_caption(bow_encoder) -> None:
    candidates = [
        Candidate(0, "figure", "12 44 8", 1, 0, search_text="Revenue of the company 2023 12 44 8"),
        Candidate(1, "figure", "Offices and parking", 1, 1),
    ]
    sampler = EvidenceSampler(SamplerConfig(k_image=1, image_features=False), bow_encoder)
    result = sampler.sample(QUESTION, candidates, token_budget=100)
    assert [item.candidate.id for item in result.kept] == [0]
    assert result.kept[0].text == "12 44 8"  # the model reads the figure's own text


def _figure(path: Path, bars: list[int], color: str = "steelblue") -> Path:
    image = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(image)
    for i, height in enumerate(bars):
        draw.rectangle([10 + i * 30, 110 - height, 30 + i * 30, 110], fill=color)
    image.save(path)
    return path


class _PixelEncoder:
    """Image features: the 8x8 grey thumbnail, L2-normalised (identical images -> cosine 1)."""

    def __init__(self) -> None:
        self.seen = 0

    def encode_images(self, images):
        self.seen += len(images)
        rows = [
            np.asarray(im.convert("L").resize((8, 8)), dtype=np.float32).ravel() for im in images
        ]
        out = np.stack(rows) - 128.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_near_identical_picture_only_figures_are_kept_once(bow_encoder, tmp_path: Path) -> None:
    logo = _figure(tmp_path / "a.png", [40, 80, 20])
    same = _figure(tmp_path / "b.png", [40, 80, 20])
    other = _figure(tmp_path / "c.png", [90, 10, 60, 30], color="darkred")
    candidates = [
        Candidate(0, "figure", "", 1, 0, image=logo),
        Candidate(1, "figure", "", 2, 0, image=same),
        Candidate(2, "figure", "", 3, 0, image=other),
        Candidate(3, "text", "The revenue of the company in 2023.", 3, 1),
    ]
    images = _PixelEncoder()
    sampler = EvidenceSampler(SamplerConfig(k_image=3, image_token_cost=10), bow_encoder, images)
    result = sampler.sample(QUESTION, candidates, token_budget=500, with_images=True)
    kept = sorted(item.candidate.id for item in result.kept)
    assert kept in ([0, 2, 3], [1, 2, 3]) and result.image_duplicates == 1
    off = EvidenceSampler(
        SamplerConfig(k_image=3, image_features=False, image_token_cost=10), bow_encoder, images
    )
    assert len(off.sample(QUESTION, candidates, token_budget=500, with_images=True).kept) == 4


def test_figures_with_different_text_are_never_merged_by_pixels(
    bow_encoder, tmp_path: Path
) -> None:
    # Rating badges: the same picture, different words (as in a dev report); text decides.
    badge = _figure(tmp_path / "a.png", [40, 80, 20])
    copy = _figure(tmp_path / "b.png", [40, 80, 20])
    candidates = [
        Candidate(0, "figure", "Revenue 2023: is the company caring?", 1, 0, image=badge),
        Candidate(1, "figure", "Revenue 2023: is the company well-led?", 2, 0, image=copy),
    ]
    images = _PixelEncoder()
    sampler = EvidenceSampler(SamplerConfig(k_image=3, image_token_cost=10), bow_encoder, images)
    result = sampler.sample(QUESTION, candidates, token_budget=500, with_images=True)
    assert len(result.kept) == 2 and images.seen == 0


def test_real_efficientnet_features_find_the_duplicate_figure(bow_encoder, tmp_path: Path) -> None:
    from models.encoders import EfficientNetImageEncoder

    a = _figure(tmp_path / "a.png", [40, 80, 20])
    b = _figure(tmp_path / "b.png", [40, 80, 20])
    c = tmp_path / "c.png"
    photo = (np.random.RandomState(0).rand(120, 160, 3) * 255).astype("uint8")
    Image.fromarray(photo).save(c)
    sampler = EvidenceSampler(
        SamplerConfig(k_image=3, image_token_cost=10), bow_encoder, EfficientNetImageEncoder()
    )
    candidates = [
        Candidate(i, "figure", "", i + 1, 0, image=path) for i, path in enumerate([a, b, c])
    ]
    result = sampler.sample(QUESTION, candidates, token_budget=500, with_images=True)
    assert len(result.kept) == 2 and result.image_duplicates == 1
    assert result.image_ms > 0


def test_images_are_charged_to_the_budget_for_a_vision_language_model(
    bow_encoder, tmp_path: Path
) -> None:
    picture = _figure(tmp_path / "a.png", [10, 20])
    candidates = [
        Candidate(0, "figure", "", 1, 0, image=picture),  # no text: only a VLM can use it
        Candidate(1, "text", "The revenue of the company in 2023 was 4.2.", 1, 1),
    ]
    config = SamplerConfig(image_token_cost=50, image_features=False)
    sampler = EvidenceSampler(config, bow_encoder)
    text_only = sampler.sample(QUESTION, candidates, token_budget=500)
    assert [item.candidate.id for item in text_only.kept] == [1]
    assert text_only.dropped[0].reason is DropReason.EMPTY
    with_images = sampler.sample(QUESTION, candidates, token_budget=500, with_images=True)
    assert [item.candidate.id for item in with_images.kept] == [0, 1]
    assert with_images.kept[0].tokens == 50
    tight = sampler.sample(QUESTION, candidates, token_budget=40, with_images=True)
    assert [item.candidate.id for item in tight.kept] == [1]  # an image is never cut


def test_document_embeddings_are_cached(bow_encoder) -> None:
    sampler = EvidenceSampler(SamplerConfig(), bow_encoder)
    sampler.sample(QUESTION, _candidates(), token_budget=300)
    calls = bow_encoder.calls
    sampler.sample("Another question about revenue?", _candidates(), token_budget=300)
    assert bow_encoder.calls == calls + 1  # the new question only


def test_samplers_can_share_one_cache(bow_encoder) -> None:
    cache = EmbeddingCache(max_items=100)
    first = EvidenceSampler(SamplerConfig(), bow_encoder, cache=cache)
    first.sample(QUESTION, _candidates(), token_budget=300)
    calls = bow_encoder.calls
    other = EvidenceSampler(SamplerConfig(k_text=1), bow_encoder, count_tokens=len, cache=cache)
    other.sample(QUESTION, _candidates(), token_budget=300)
    assert bow_encoder.calls == calls + 1  # the question only
    small = EmbeddingCache(max_items=3)
    EvidenceSampler(SamplerConfig(), bow_encoder, cache=small).sample(
        QUESTION, _candidates(), token_budget=300
    )
    assert len(small.texts) == 3


def test_token_counter_of_the_answering_model_is_used(bow_encoder) -> None:
    sampler = EvidenceSampler(SamplerConfig(k_text=8), bow_encoder, count_tokens=len)
    result = sampler.sample(QUESTION, _candidates(), token_budget=100)
    assert all(item.tokens == len(item.text) for item in result.kept)
    assert result.kept_tokens <= 100


def test_bad_input_is_refused(sampler: EvidenceSampler) -> None:
    with pytest.raises(ValueError, match="question"):
        sampler.sample("  ", _candidates(), token_budget=10)
    with pytest.raises(ValueError, match="token_budget"):
        sampler.sample(QUESTION, _candidates(), token_budget=-1)
    twice = [Candidate(1, "text", "a b c d e f g h", 1, 0)] * 2
    with pytest.raises(ValueError, match="unique"):
        sampler.sample(QUESTION, twice, token_budget=10)
    with pytest.raises(ValueError, match="text encoder"):
        EvidenceSampler(SamplerConfig())


def test_config_is_frozen_described_and_validated() -> None:
    assert all(field.description for field in SamplerConfig.model_fields.values())
    with pytest.raises(ValidationError):
        SamplerConfig(k_txt=3)
    with pytest.raises(ValidationError):
        SamplerConfig(duplicate_image_similarity=1.5)
    with pytest.raises(ValidationError):
        SamplerConfig().k_text = 1  # type: ignore[misc]
