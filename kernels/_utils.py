"""Shared kernel helpers: backend choice, interpreter detection, validation. No project imports."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from enum import StrEnum

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "check_same_device",
    "interpreting",
    "next_power_of_2",
    "resolve_backend",
    "triton_available",
]


class Backend(StrEnum):
    """Which implementation a kernel dispatcher runs.

    - ``auto``: Triton when the tensors are on CUDA or ``TRITON_INTERPRET=1`` is set, otherwise the
      fast PyTorch path (the gather path on the CPU).
    - ``triton``: the Triton kernel; raises when it cannot run, never falls back.
    - ``torch``: the fast PyTorch path (runs on any device; on the CPU it is the fast path).
    - ``reference``: the plain fp32 spec, dense and slow, for tests.
    """

    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"
    REFERENCE = "reference"


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    # NOTE: the one environment variable kernels read; it belongs to Triton (STYLE.md B4).
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (probed once, lazily)."""
    return importlib.util.find_spec("triton") is not None


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def resolve_backend(backend: Backend | str, *tensors: torch.Tensor) -> Backend:
    """Turn ``auto`` into a concrete backend and check that an explicit ``triton`` can run.

    Raises:
        ValueError: on an unknown backend name.
        RuntimeError: when ``triton`` is asked for but cannot run on these tensors.
    """
    try:
        backend = Backend(backend)
    except ValueError as exc:
        names = ", ".join(repr(b.value) for b in Backend)
        raise ValueError(f"unknown backend {backend!r}; use one of {names}") from exc
    on_cuda = all(t.is_cuda for t in tensors)
    can_triton = triton_available() and (
        on_cuda or (interpreting() and not any(t.is_cuda for t in tensors))
    )
    if backend is Backend.AUTO:
        return Backend.TRITON if can_triton else Backend.TORCH
    if backend is Backend.TRITON and not can_triton:
        raise RuntimeError(
            "backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
            "triton is imported (and the triton package installed); use backend='torch' on the CPU"
        )
    return backend


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ValueError when the given tensors live on different devices."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
