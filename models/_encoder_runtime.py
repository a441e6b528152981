"""The text encoders' transformer body on OpenVINO: chosen, converted once, cached, run.

Only the body (token ids in, last hidden states out) moves to OpenVINO; the Hugging Face
tokeniser, MiniLM's mean pooling and SPLADE's head stay in torch, so both runtimes share every
step but the matmuls. Inference runs in fp32 (`INFERENCE_PRECISION_HINT`): OpenVINO would pick
bf16 on CPUs that have it, which moves vectors by ~1e-3.

The IR is written once into the model cache (`FOLIO_MODEL_CACHE`, else the user's cache folder),
keyed by the sha256 of the source folder's config and weights and the OpenVINO version:

    <cache>/encoders/<label>-openvino-<key16>/
        model.xml, model.bin   the IR
        ir.json                input names, sha256 and size of both files
        folio-source.json      written last: the conversion is complete

A file lock keeps two processes from converting at once, the folder appears by an atomic
rename (`_packaged.convert_into`), and a folder whose files no longer match `ir.json` is moved
aside and converted again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models._packaged import convert_into, file_lock, is_converted, sha256_file
from models.config import DeviceChoice, EncoderConfig, EncoderRuntime

logger = logging.getLogger(__name__)

__all__ = [
    "EncoderRuntimeChoice",
    "OpenVinoBody",
    "default_model_cache",
    "select_encoder_runtime",
]

_REPORT = "ir.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class EncoderRuntimeChoice:
    """A resolved encoder runtime and the one-line reason for it (for the log)."""

    runtime: EncoderRuntime  # TORCH or OPENVINO, never AUTO
    reason: str


def select_encoder_runtime(
    config: EncoderConfig, *, cuda_available: bool | None = None
) -> EncoderRuntimeChoice:
    """Resolve `config.runtime`: auto is openvino on CPU when installed, torch on a CUDA GPU.

    Raises:
        ValueError: runtime="openvino" with device="cuda", or openvino not installed (one line).
    """
    if config.runtime is EncoderRuntime.TORCH:
        return EncoderRuntimeChoice(EncoderRuntime.TORCH, "runtime=torch is configured")
    if config.runtime is EncoderRuntime.OPENVINO:
        if config.device is DeviceChoice.CUDA:
            raise ValueError(
                'the encoders\' openvino runtime runs on the CPU, not device="cuda": use '
                "FOLIO_ENCODERS__RUNTIME=torch"
            )
        if not _openvino_installed():
            raise ValueError(
                "encoders runtime=openvino but openvino is not installed: pip install -e . "
                "(or FOLIO_ENCODERS__RUNTIME=torch)"
            )
        return EncoderRuntimeChoice(EncoderRuntime.OPENVINO, "runtime=openvino is configured")
    if _on_gpu(config.device, cuda_available):
        return EncoderRuntimeChoice(EncoderRuntime.TORCH, "a CUDA GPU is used, and torch runs on it")
    if not _openvino_installed():
        return EncoderRuntimeChoice(EncoderRuntime.TORCH, "openvino is not installed")
    return EncoderRuntimeChoice(EncoderRuntime.OPENVINO, "on CPU OpenVINO encodes faster (fp32)")


def _openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _on_gpu(device: DeviceChoice, cuda_available: bool | None) -> bool:
    if device is not DeviceChoice.AUTO:
        return device is DeviceChoice.CUDA
    return torch.cuda.is_available() if cuda_available is None else cuda_available


def default_model_cache() -> Path:
    """`FOLIO_MODEL_CACHE`, else `$XDG_CACHE_HOME/folio/models` (~/.cache/folio/models)."""
    if os.environ.get("FOLIO_MODEL_CACHE"):
        return Path(os.environ["FOLIO_MODEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "folio" / "models"


class _Positional(torch.nn.Module):
    """A body taking its inputs by position (the order of `names`), returning hidden states."""

    def __init__(self, body: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.body = body
        self.names = tuple(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.body(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


class OpenVinoBody:
    """A transformer body (`module(**batch).last_hidden_state`) run by OpenVINO on the CPU.

    Converted on first use, once per source weights (cached on disk), and compiled once per
    thread count. Thread-safe: each call gets its own infer request.
    """

    def __init__(self, module: torch.nn.Module, source: Path, label: str, cache_dir: Path) -> None:
        self._module = module
        self._source = source
        self._label = label
        self._cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._model: Any = None  # ov.Model
        self._names: tuple[str, ...] = ()
        self._compiled: dict[int, Any] = {}  # threads -> ov.CompiledModel

    def __call__(self, batch: Mapping[str, torch.Tensor], threads: int) -> torch.Tensor:
        """Hidden states [B, T, H] (float32, CPU) of a tokenised batch, on `threads` threads."""
        compiled, names = self._compiled_for(threads, batch)
        request = compiled.create_infer_request()
        request.infer([batch[name].cpu().numpy() for name in names])
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    def _compiled_for(self, threads: int, batch: Mapping[str, torch.Tensor]) -> tuple[Any, tuple]:
        threads = threads if threads > 0 else torch.get_num_threads()
        compiled = self._compiled.get(threads)
        if compiled is None:
            with self._lock:
                if self._model is None:
                    self._model, self._names = self._load(batch)
                compiled = self._compiled.get(threads)
                if compiled is None:
                    import openvino as ov

                    compiled = ov.Core().compile_model(
                        self._model,
                        "CPU",
                        {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"},
                    )
                    self._compiled[threads] = compiled
        return compiled, self._names

    def _load(self, batch: Mapping[str, torch.Tensor]) -> tuple[Any, tuple[str, ...]]:
        """The cached IR (converting it first if needed) and its input names, in order."""
        import openvino as ov

        names = tuple(batch)
        key = self.key(names)
        folder = self._cache_dir / "encoders" / f"{self._label}-openvino-{key[:16]}"
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only cache: convert in memory, every process
            logger.warning("cannot write the model cache %s (%s): converting in memory", folder, exc)
            return self._convert(batch), names
        with file_lock(folder.parent / f".{folder.name}.lock"):
            if is_converted(folder) and not _intact(folder):
                stale = folder.with_name(f".{folder.name}-corrupt")
                logger.warning("%s does not match its %s: converting it again", folder, _REPORT)
                shutil.rmtree(stale, ignore_errors=True)
                os.rename(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
            if not is_converted(folder):
                convert_into(
                    folder,
                    lambda tmp: self._write_ir(batch, tmp),
                    source=f"{self._label} (OpenVINO IR)",
                    sha=key,
                )
        report = json.loads((folder / _REPORT).read_text(encoding="utf-8"))
        return ov.Core().read_model(folder / "model.xml"), tuple(report["inputs"])

    def key(self, names: Sequence[str]) -> str:
        """sha256 over the source's config and weights, the input names and OpenVINO's version."""
        import openvino as ov

        digest = hashlib.sha256(f"{ov.__version__}|{','.join(names)}|{self._label}".encode())
        files = sorted(
            p
            for p in self._source.iterdir()
            if p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES
        )
        for path in files:
            digest.update(f"{path.name}:{sha256_file(path)}".encode())
        return digest.hexdigest()

    def _convert(self, batch: Mapping[str, torch.Tensor]) -> Any:
        import openvino as ov

        example = tuple(t.cpu() for t in batch.values())
        # NOTE: the tracer warns that BERT's mask code turns shapes into Python booleans; on an
        # encoder those are constant (no cache, not causal), and the tests check dynamic shapes.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return ov.convert_model(_Positional(self._module, tuple(batch)), example_input=example)

    def _write_ir(self, batch: Mapping[str, torch.Tensor], out: Path) -> None:
        import openvino as ov

        # NOTE: compress_to_fp16 defaults to True; fp32 weights keep the torch vectors.
        ov.save_model(self._convert(batch), out / "model.xml", compress_to_fp16=False)
        files = {name: _identity(out / name) for name in ("model.xml", "model.bin")}
        report = {"inputs": list(batch), "files": files}
        (out / _REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _identity(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _intact(folder: Path) -> bool:
    """Whether the IR files are the ones recorded at conversion."""
    try:
        report = json.loads((folder / _REPORT).read_text(encoding="utf-8"))
        return all(
            (folder / name).is_file() and _identity(folder / name) == recorded
            for name, recorded in report["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
