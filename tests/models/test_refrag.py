"""REFRAG: chunking inside evidence items, compressed inputs, the expansion policy, the projector
file, and the stage in the answering pipeline (tiny random Qwen2 and Gemma 3 decoders)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.config import GeneratorConfig
from models.generator import Generator, build_prompt
from models.refrag import (
    ChunkEncoder,
    ChunkProjector,
    RefragCompressor,
    chunk_spans,
    default_projector_path,
    embedding_norm,
)
from models.urag import layout_prompt
from tests.models.test_generator import _tokenizer
from tests.models.test_urag import MODELS, _prompt


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


@pytest.fixture(scope="module", params=sorted(MODELS))
def generator(request, tokenizer) -> Generator:
    model = MODELS[request.param](len(tokenizer))
    gen = Generator(model, tokenizer, GeneratorConfig(device="cpu", stop_at_newline=False))
    gen.eos_token_ids = frozenset()
    return gen


@pytest.fixture(scope="module")
def encoder() -> ChunkEncoder:
    return ChunkEncoder()


def _compressor(generator: Generator, encoder: ChunkEncoder) -> RefragCompressor:
    hidden = generator.model.config.hidden_size
    torch.manual_seed(0)
    projector = ChunkProjector(encoder.feature_dim, hidden, width=32, norm=embedding_norm(generator))
    return RefragCompressor(generator, projector, encoder)


def test_chunks_never_cross_evidence_items() -> None:
    spans = chunk_spans([(3, 40), (40, 41), (50, 66)], k=16)
    assert [(c.item, c.start, c.end) for c in spans] == [
        (0, 3, 19), (0, 19, 35), (0, 35, 40), (1, 40, 41), (2, 50, 66),
    ]  # fmt: skip
    with pytest.raises(ValueError):
        chunk_spans([(0, 4)], k=0)


def test_expanding_every_chunk_equals_the_plain_prompt(generator: Generator, encoder: ChunkEncoder) -> None:
    layout = layout_prompt(generator, _prompt())
    comp = _compressor(generator, encoder).compress(
        layout.inputs.input_ids, layout.segments, k=4, expand_fraction=1.0
    )
    assert comp.positions == comp.tokens_before == layout.inputs.num_tokens and comp.ratio == 1.0
    with torch.no_grad():
        plain = generator.model(input_ids=layout.inputs.input_ids).logits
        mixed = generator.model(inputs_embeds=comp.inputs.inputs_embeds).logits
    torch.testing.assert_close(mixed, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [3, 8])
def test_compressed_chunks_become_one_position_each(generator: Generator, encoder: ChunkEncoder, k: int) -> None:
    layout = layout_prompt(generator, _prompt())
    compressor = _compressor(generator, encoder)
    ids = layout.inputs.input_ids
    comp = compressor.compress(ids, layout.segments, k=k, expand_fraction=0.0)
    spans = chunk_spans(layout.segments, k)
    evidence = sum(end - start for start, end in layout.segments)
    assert comp.chunks == len(spans) and comp.expanded == ()
    assert comp.positions == ids.shape[1] - evidence + len(spans)
    assert sum(comp.items_compressed) == len(spans) and len(comp.items_compressed) == len(layout.segments)
    embeds = comp.inputs.inputs_embeds[0]
    plain = generator.embed_tokens(ids)[0]
    first = layout.segments[0][0]
    torch.testing.assert_close(embeds[:first], plain[:first])  # instructions stay tokens
    torch.testing.assert_close(embeds[-3:], plain[-3:])  # the question's tail stays tokens
    # A compressed chunk's vector has the decoder's typical embedding norm.
    assert embeds[first].norm().item() == pytest.approx(compressor.projector.norm.item(), rel=1e-4)
    out = generator.generate(comp.inputs, max_new_tokens=3, stop_at_newline=False)
    assert out.prompt_tokens == comp.positions and out.new_tokens == 3


def test_the_question_gate_expands_the_chunks_most_like_the_question(generator: Generator, encoder: ChunkEncoder) -> None:
    prompt = build_prompt(
        "How tall is the Eiffel Tower?",
        ["The revenue in 2023 was 4.2 billion dollars.", "The Eiffel Tower is 330 metres tall."],
    )
    layout = layout_prompt(generator, prompt)
    compressor = _compressor(generator, encoder)
    ids = layout.inputs.input_ids
    k = max(end - start for start, end in layout.segments)  # one chunk per item
    comp = compressor.compress(
        ids, layout.segments, k=k, expand_fraction=0.5, question="How tall is the Eiffel Tower?"
    )
    assert comp.expanded == (1,) and comp.items_compressed == (1, 0)
    by_recency = compressor.compress(ids, layout.segments, k=k, expand_fraction=0.5, chunk_scores=[1.0, 0.0])
    assert by_recency.expanded == (0,)
    with pytest.raises(ValueError):
        compressor.compress(ids, layout.segments, k=k, expand_fraction=0.5, chunk_scores=[1.0])


def test_answer_training_reaches_only_the_projector(generator: Generator, encoder: ChunkEncoder) -> None:
    """`pipeline.research.refrag_qa`'s step: the answer's loss after a compressed prompt trains the projector
    (gradients reach it, not the frozen decoder) and falls on a prompt it is trained on."""
    from pipeline.research.refrag_qa import answer_loss

    layout = layout_prompt(generator, _prompt())
    compressor = _compressor(generator, encoder)
    ids = layout.inputs.input_ids
    plan = compressor.plan(ids, layout.segments, k=4, expand_fraction=0.0)
    assert plan.expanded == frozenset() and len(plan.spans) == len(chunk_spans(layout.segments, 4))
    with torch.no_grad():  # plan + assemble is what compress does
        assembled = compressor.assemble(ids, plan, compressor.projector(plan.features))
    torch.testing.assert_close(
        assembled.inputs.inputs_embeds,
        compressor.compress(ids, layout.segments, k=4, expand_fraction=0.0).inputs.inputs_embeds,
    )
    for param in generator.model.parameters():
        param.requires_grad_(False)
    answer = torch.tensor([5, 9, 11])
    opt = torch.optim.Adam(compressor.projector.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = answer_loss(compressor, plan, ids, answer)
        opt.zero_grad()
        loss.backward()
        grads = [q.grad for q in compressor.projector.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        opt.step()
        losses.append(loss.item())
    assert all(q.grad is None for q in generator.model.parameters())
    assert losses[-1] < losses[0] - 0.1, losses


def test_the_foreign_control_takes_another_prompts_chunks_in_place(generator: Generator, encoder: ChunkEncoder) -> None:
    """`pipeline.research.refrag_answers`' control: the next question's chunk features, cycled over this
    prompt's chunks; with `--foreign-document`, the next question on another document."""
    from types import SimpleNamespace

    from pipeline.research.refrag_answers import foreign_index, with_foreign_features

    layout = layout_prompt(generator, _prompt())
    plan = _compressor(generator, encoder).plan(layout.inputs.input_ids, layout.segments, k=4, expand_fraction=0.5)
    other = torch.arange(2 * plan.features.shape[1], dtype=torch.float32).view(2, -1)
    foreign = with_foreign_features(plan, other)
    assert foreign.spans == plan.spans and foreign.expanded == plan.expanded
    assert torch.equal(foreign.features[0], other[0]) and torch.equal(foreign.features[3], other[1])
    prompts = [(SimpleNamespace(doc_id=d), None) for d in ["a", "a", "b", "a"]]
    assert [foreign_index(prompts, i, False) for i in range(4)] == [1, 2, 3, 0]
    assert [foreign_index(prompts, i, True) for i in range(4)] == [2, 2, 3, 2]
    assert foreign_index(prompts[:1], 0, True) == 0


def test_projector_round_trip_and_size_check(generator: Generator, encoder: ChunkEncoder, tmp_path: Path) -> None:
    projector = _compressor(generator, encoder).projector
    projector.save(tmp_path / "p.pt", note="test")
    loaded = ChunkProjector.load(tmp_path / "p.pt")
    feats = torch.randn(5, encoder.feature_dim)
    torch.testing.assert_close(loaded(feats), projector(feats), rtol=2e-3, atol=2e-3)  # fp16 file
    assert loaded.settings == {"note": "test"}
    wrong = ChunkProjector(encoder.feature_dim, 48)
    with pytest.raises(ValueError, match="train one"):
        RefragCompressor(generator, wrong, encoder)
    with pytest.raises(FileNotFoundError, match="pipeline.research.refrag_train"):
        ChunkProjector.load(tmp_path / "missing.pt")


def test_token_features_are_the_first_encoder_states_in_order(encoder: ChunkEncoder) -> None:
    by_token = ChunkEncoder(tokens=6)
    assert by_token.feature_dim == 6 * encoder.hidden_size
    texts = ["Tall.", "The Eiffel Tower is 330 metres tall and was completed in 1889."]
    feats, vectors = by_token.encode(texts)
    tokenizer, model = by_token._get()
    for row, text in enumerate(texts):
        batch = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            states = model(**batch).last_hidden_state[0]  # [T, H]
        n = min(len(states), 6)
        expected = torch.zeros(6, encoder.hidden_size)
        expected[:n] = states[:n]
        torch.testing.assert_close(feats[row].view(6, -1), expected, rtol=1e-4, atol=1e-4)
    # The expansion gate's vectors do not depend on the feature kind.
    torch.testing.assert_close(vectors, encoder.encode(texts)[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        ChunkEncoder(tokens=-1)


def test_a_token_feature_projector_round_trips_and_names_its_encoder(
    generator: Generator, tmp_path: Path
) -> None:
    by_token = ChunkEncoder(tokens=6)
    hidden = generator.model.config.hidden_size
    torch.manual_seed(0)
    projector = ChunkProjector(by_token.feature_dim, hidden, width=32, tokens=6, token_rank=8)
    projector.save(tmp_path / "p.pt")
    loaded = ChunkProjector.load(tmp_path / "p.pt")
    assert (loaded.tokens, loaded.token_rank) == (6, 8)
    assert ChunkEncoder.for_projector(loaded).tokens == 6
    assert ChunkEncoder.for_projector(ChunkProjector(768, hidden)).tokens == 0
    feats = torch.randn(3, by_token.feature_dim)
    torch.testing.assert_close(loaded(feats), projector(feats), rtol=2e-3, atol=2e-3)
    # The token order matters to the projector (mean and max could not see it).
    swapped = feats.view(3, 6, -1).flip(1).reshape(3, -1)
    assert not torch.allclose(projector(swapped), projector(feats), atol=1e-3)
    layout = layout_prompt(generator, _prompt())
    comp = RefragCompressor(generator, loaded, by_token).compress(
        layout.inputs.input_ids, layout.segments, k=4, expand_fraction=0.0
    )
    evidence = sum(end - start for start, end in layout.segments)
    assert comp.positions == layout.inputs.num_tokens - evidence + comp.chunks
    with pytest.raises(ValueError, match="token states"):
        ChunkProjector(100, hidden, tokens=6)


def test_the_shipped_projector_fits_the_default_generator() -> None:
    path = Path(__file__).resolve().parents[2] / "models" / "weights" / "refrag_projector_d896.pt"
    projector = ChunkProjector.load(path)
    assert projector.hidden_size == 896 and projector.feature_dim == 768
    assert 0.3 < projector.norm.item() < 1.0  # Qwen2.5-0.5B's mean token-embedding norm is ~0.51
    assert "bench.refrag_train" in projector.settings["command"]


def test_default_projector_path_names_the_hidden_size(generator: Generator) -> None:
    assert default_projector_path(generator).name == "refrag_projector_d64.pt"
