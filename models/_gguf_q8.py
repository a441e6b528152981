"""Re-quantise a GGUF to Q8_0 with the `gguf` package, and check the result.

OpenVINO GenAI reads GGUF directly but refuses the packaged Qwen 0.5B as it ships (mostly Q5_0
tensors: "gguf_tensor_to_f16 failed"). Q8_0 reads, and kept the greedy answers of the fp32 model
on the dev questions (MODELS.md, "Inference runtimes"). Every quantised tensor that is not Q8_0
yet is dequantised and quantised again; F32 and F16 tensors (norms, biases) are copied as they are.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import LlamaFileType
from gguf.quants import dequantize, quantize

__all__ = ["KEPT_TYPES", "check_q8_0", "quantize_q8_0"]

KEPT_TYPES = frozenset(
    {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.Q8_0}
)
"""Tensor types a Q8_0 output may hold: Q8_0 weights, float norms and biases."""

_Q8_BLOCK = 32  # values per Q8_0 block: a row must be a whole number of blocks
_WRITER_OWNED = ("GGUF.", "general.architecture")  # the writer adds these itself
_ARCH = "general.architecture"
_FILE_TYPE = "general.file_type"


def quantize_q8_0(source: Path, target: Path) -> dict[str, int]:
    """Write `source` to `target` with every quantised tensor in Q8_0.

    Args:
        source: A GGUF file.
        target: Where the new GGUF goes (overwritten).

    Returns:
        The tensor-type counts of the written file (`{"F32": 121, "Q8_0": 169}`), checked by
        `check_q8_0`.

    Raises:
        ValueError: A tensor cannot be stored as Q8_0 (a row not a multiple of 32 values), or
            the written file does not hold the source's tensors in the kept types.
    """
    reader = GGUFReader(source)
    arch = str(reader.fields[_ARCH].contents())
    writer = GGUFWriter(target, arch)
    for name, field in reader.fields.items():
        if name.startswith(_WRITER_OWNED):
            continue
        if name == _FILE_TYPE:
            writer.add_file_type(LlamaFileType.MOSTLY_Q8_0)
            continue
        main = field.types[0]
        sub = field.types[-1] if main == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), main, sub_type=sub)
    for tensor in reader.tensors:
        kind = GGMLQuantizationType(int(tensor.tensor_type))
        if kind in KEPT_TYPES:
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=kind)
            continue
        values = dequantize(tensor.data, kind)  # [..., ne0] float32, numpy order
        if values.shape[-1] % _Q8_BLOCK:
            raise ValueError(
                f"{source.name}: tensor {tensor.name} has rows of {values.shape[-1]} values, "
                f"not a multiple of {_Q8_BLOCK}: it cannot be stored as Q8_0"
            )
        writer.add_tensor(
            tensor.name, quantize(values, GGMLQuantizationType.Q8_0),
            raw_dtype=GGMLQuantizationType.Q8_0,
        )  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return check_q8_0(target, expected=[t.name for t in reader.tensors])


def check_q8_0(path: Path, *, expected: list[str]) -> dict[str, int]:
    """Read `path` back: the same tensor names as `expected`, each in a kept type.

    Raises:
        ValueError: Tensors are missing or extra, or one has a type other than F32, F16, Q8_0.
    """
    reader = GGUFReader(path)
    names = [t.name for t in reader.tensors]
    if sorted(names) != sorted(expected):
        missing = sorted(set(expected) - set(names))[:3]
        raise ValueError(
            f"{path.name}: {len(names)} tensors written, {len(expected)} expected "
            f"(missing e.g. {missing})"
        )
    counts: Counter[str] = Counter()
    for tensor in reader.tensors:
        kind = GGMLQuantizationType(int(tensor.tensor_type))
        if kind not in KEPT_TYPES:
            raise ValueError(f"{path.name}: tensor {tensor.name} is {kind.name}, not Q8_0/F32/F16")
        counts[kind.name] += 1
    if not counts.get("Q8_0"):
        raise ValueError(f"{path.name}: no Q8_0 tensor written")
    return dict(sorted(counts.items()))
