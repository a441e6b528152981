"""Encoders: the SPLADE head (Sparton's fused kernel) against its naive twin, and the real
packaged models (small inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import Backend, sparse_lm_head
from models import encoders as encoders_module
from models.config import EncoderConfig
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
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def splade() -> SpladeEncoder:
    return SpladeEncoder()


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
