"""Which runtime runs the generator: OpenVINO GenAI where it is fast and enough, torch elsewhere.

OpenVINO GenAI answers 4-6x faster than torch fp32 on a laptop CPU (MODELS.md, "Inference
runtimes") but exposes no hidden states and takes no input embeddings, so every stage that reads
or feeds the model's internals (URaG, REFRAG, the `folio_sparse` attention backend) runs on torch,
and so do GPUs and vision-language models. Only the packaged Qwen models are converted for it.
A remote server (runtime=openai) is only ever chosen explicitly, and refuses those stages too.

    choice = select_runtime(config, needs_internals=cfg.use_urag, stage="URaG")
    logger.info("generator runtime: %s (%s)", choice.runtime, choice.reason)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from models.config import DeviceChoice, GeneratorConfig, GeneratorRuntime

__all__ = ["OPENVINO_MODELS", "RuntimeChoice", "select_runtime"]

OPENVINO_MODELS: tuple[str, ...] = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
"""Packaged models the openvino runtime runs (re-quantised to Q8_0 once)."""

_SPARSE_BACKEND = "folio_sparse"  # models.attention.BACKEND_NAME, without importing torch code
_USE_TORCH = "--runtime torch (FOLIO_GENERATOR__RUNTIME=torch)"


@dataclass(frozen=True)
class RuntimeChoice:
    """A resolved runtime and the one-line reason for it (for the log)."""

    runtime: GeneratorRuntime  # TORCH, OPENVINO or OPENAI, never AUTO
    reason: str


def select_runtime(
    config: GeneratorConfig,
    *,
    needs_internals: bool = False,
    stage: str = "this stage",
    cuda_available: bool | None = None,
) -> RuntimeChoice:
    """Resolve `config.runtime` for one use of the generator.

    Args:
        config: The generator settings (`runtime`, `model`, `device`, `attn_implementation`).
        needs_internals: The request reads hidden states or feeds input embeddings (URaG,
            REFRAG). The `folio_sparse` attention backend in `config` counts too.
        stage: The stage that needs them, named in the reason and the error ("URaG").
        cuda_available: Whether a CUDA GPU is usable; None asks torch.

    Returns:
        The runtime to load, never AUTO, with why.

    Raises:
        ValueError: runtime="openvino" with a stage that needs model internals, a model the
            openvino runtime does not run, or device="cuda"; runtime="openai" with a stage that
            needs model internals (one line naming the fix).
    """
    if config.attn_implementation == _SPARSE_BACKEND:
        needs_internals, stage = True, f"the {_SPARSE_BACKEND} attention backend"
    if config.runtime is GeneratorRuntime.OPENAI:
        if needs_internals:
            raise ValueError(
                f"{stage} needs model internals (hidden states, input embeddings) that a remote "
                f"generator (runtime=openai) does not expose: it needs a local torch model, "
                f"{_USE_TORCH}"
            )
        return RuntimeChoice(
            GeneratorRuntime.OPENAI, f"runtime=openai is configured ({config.base_url})"
        )
    if config.runtime is GeneratorRuntime.TORCH:
        return RuntimeChoice(GeneratorRuntime.TORCH, "runtime=torch is configured")
    if config.runtime is GeneratorRuntime.OPENVINO:
        _check_openvino_can_run(config, needs_internals=needs_internals, stage=stage)
        return RuntimeChoice(GeneratorRuntime.OPENVINO, "runtime=openvino is configured")
    if needs_internals:
        return RuntimeChoice(
            GeneratorRuntime.TORCH, f"{stage} needs model internals that only torch exposes"
        )
    if config.model not in OPENVINO_MODELS:
        return RuntimeChoice(
            GeneratorRuntime.TORCH,
            f"{config.model!r} is not a packaged Qwen model (openvino runs only "
            f"{', '.join(OPENVINO_MODELS)})",
        )
    if _on_gpu(config, cuda_available):
        return RuntimeChoice(GeneratorRuntime.TORCH, "a CUDA GPU is used, and torch runs on it")
    if importlib.util.find_spec("openvino_genai") is None:
        return RuntimeChoice(
            GeneratorRuntime.TORCH, "openvino-genai is not installed (pip install -e .)"
        )
    return RuntimeChoice(
        GeneratorRuntime.OPENVINO, f"{config.model} on CPU runs fastest on OpenVINO GenAI (Q8_0)"
    )


def _check_openvino_can_run(config: GeneratorConfig, *, needs_internals: bool, stage: str) -> None:
    """Refuse, in one line, what an explicit runtime="openvino" cannot do."""
    if needs_internals:
        raise ValueError(
            f"{stage} needs model internals (hidden states, input embeddings) that the openvino "
            f"runtime does not expose: run it with {_USE_TORCH}"
        )
    if config.model not in OPENVINO_MODELS:
        raise ValueError(
            f"the openvino runtime runs the packaged models {', '.join(OPENVINO_MODELS)}, not "
            f"{config.model!r}: use {_USE_TORCH}"
        )
    if config.device is DeviceChoice.CUDA:
        raise ValueError(f'the openvino runtime runs on the CPU, not device="cuda": use {_USE_TORCH}')


def _on_gpu(config: GeneratorConfig, cuda_available: bool | None) -> bool:
    """Whether the torch runtime would put the model on a CUDA GPU."""
    if config.device is DeviceChoice.CPU:
        return False
    if config.device is DeviceChoice.CUDA:
        return True
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return cuda_available
