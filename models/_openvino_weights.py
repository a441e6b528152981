"""Packaged Qwen weights for the openvino runtime: joined, checked, re-quantised to Q8_0 once.

The folder sits beside the torch runtime's fp32 conversion in the same cache directory (the
library's `models/`, or `FOLIO_MODEL_CACHE`) and never needs it:

    <cache>/qwen2.5-coder-0.5b-q8_0-1d9614638d18/
        model.gguf          the Q8_0 GGUF OpenVINO GenAI reads
        tokenizer.json ...  the transformers tokenizer with the GGUF's chat template
        q8_0.json           output sha256, size and tensor types, end-of-sequence id
        folio-source.json   written last: the conversion is complete
        openvino-ir/        the OpenVINO model OpenVINO GenAI builds from model.gguf, saved on
                            first load: later loads read it in ~2 s instead of rebuilding the
                            graph from the GGUF (~10 s idle, 30 s on a loaded machine)

The joined input must match the pinned sha256 (`_packaged.join_parts`); the output is read back
and its tensor types checked (`_gguf_q8.check_q8_0`). A file lock keeps two processes from
converting at once, and the folder appears by an atomic rename.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from models._gguf_q8 import quantize_q8_0
from models._packaged import (
    PACKAGED_MODELS,
    ModelSourceError,
    convert_into,
    file_lock,
    gguf_chat_template,
    is_converted,
    join_parts,
    locate_parts,
    require_cache,
    sha256_file,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IR_FOLDER",
    "MODEL_FILE",
    "Q8Weights",
    "resolve_openvino_ir",
    "resolve_openvino_weights",
]

MODEL_FILE = "model.gguf"
IR_FOLDER = "openvino-ir"
_REPORT = "q8_0.json"
# What OpenVINO GenAI writes beside a GGUF it was asked to save (model, tokenizer, detokenizer).
_IR_FILES = tuple(
    f"openvino_{part}.{ext}"
    for part in ("model", "tokenizer", "detokenizer")
    for ext in ("xml", "bin")
)


class Q8Weights:
    """A finished Q8_0 folder: the GGUF's path and what the conversion recorded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.gguf = folder / MODEL_FILE
        report = json.loads((folder / _REPORT).read_text(encoding="utf-8"))
        self.sha256: str = report["sha256"]
        self.eos_token_id: int | None = report.get("eos_token_id")
        if not self.gguf.is_file() or self.gguf.stat().st_size != report["bytes"]:
            raise ModelSourceError(
                f"{self.gguf} is missing or not the size recorded at conversion; delete "
                f"{folder} to convert it again"
            )


def resolve_openvino_weights(model: str, cache_dir: Path | None) -> Q8Weights:
    """The Q8_0 folder of a packaged model, converting it once if it is not there yet.

    Raises:
        ValueError: `model` is not a packaged model, or no cache directory was given.
        ModelSourceError: Parts missing or failing the pinned sha256, or a broken output.
    """
    if model not in PACKAGED_MODELS:
        raise ValueError(f"the openvino runtime runs packaged models only, not {model!r}")
    entry = PACKAGED_MODELS[model]
    cache = require_cache(cache_dir, model)
    folder = cache / f"{entry.name}-q8_0-{entry.sha256[:12]}"
    if not is_converted(folder):
        cache.mkdir(parents=True, exist_ok=True)
        with file_lock(cache / f".{folder.name}.lock"):
            if not is_converted(folder):  # another process may have finished while we waited
                parts = locate_parts(entry)

                def build(tmp: Path) -> None:
                    source = tmp / "source.gguf"
                    join_parts(entry, parts, source)
                    try:
                        _build_q8_folder(source, tmp)
                    finally:
                        source.unlink(missing_ok=True)

                convert_into(folder, build, source=f"{entry.name} (Q8_0)", sha=entry.sha256)
    return Q8Weights(folder)


def resolve_openvino_ir(weights: Q8Weights) -> Path:
    """The OpenVINO model folder for `weights`, saved once from the GGUF by OpenVINO GenAI itself
    (`enable_save_ov_model`), with the transformers tokenizer files beside it.

    Raises:
        ModelSourceError: OpenVINO GenAI could not read the GGUF or did not save every file.
    """
    folder = weights.folder / IR_FOLDER
    if not is_converted(folder):
        with file_lock(weights.folder.parent / f".{weights.folder.name}-ir.lock"):
            if not is_converted(folder):

                def build(tmp: Path) -> None:
                    _save_ir(weights, tmp)

                convert_into(
                    folder, build, source=f"{weights.gguf} (OpenVINO IR)", sha=weights.sha256
                )
    return folder


def _save_ir(weights: Q8Weights, out: Path) -> None:
    """Have OpenVINO GenAI build its model from the GGUF and save it into `out`."""
    import openvino_genai as ov_genai

    link = out / MODEL_FILE  # GenAI saves beside the file it read: read it through a link in out
    link.symlink_to(weights.gguf.resolve())
    try:
        pipeline = ov_genai.LLMPipeline(str(link), "CPU", enable_save_ov_model=True)
        del pipeline
    except Exception as exc:  # noqa: BLE001 - the native reader raises RuntimeError, IndexError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(
            f"OpenVINO could not read {weights.gguf}: {first} (delete {weights.folder} to "
            "convert it again)"
        ) from exc
    finally:
        link.unlink(missing_ok=True)
    missing = [name for name in _IR_FILES if not (out / name).is_file()]
    if missing:
        raise ModelSourceError(
            f"OpenVINO GenAI did not save {', '.join(missing)} for {weights.gguf}"
        )
    for item in weights.folder.iterdir():  # the tokenizer and chat template, for transformers
        if item.is_file() and item.name.startswith(
            ("tokenizer", "chat_template", "special_tokens")
        ):
            shutil.copy2(item, out / item.name)


def _build_q8_folder(source: Path, out: Path) -> None:
    """Write the Q8_0 GGUF, the tokenizer and the report for `source` into `out`."""
    from transformers import AutoTokenizer

    target = out / MODEL_FILE
    try:
        types = quantize_q8_0(source, target)
    except ValueError as exc:
        raise ModelSourceError(f"re-quantising {source.name} to Q8_0 failed: {exc}") from exc
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = gguf_chat_template(source)
    tokenizer.save_pretrained(out)
    _write_report(source, out, types)


def _write_report(source: Path, out: Path, types: dict[str, int]) -> None:
    """Record the output's digest, size and tensor types, and the source's end token."""
    target = out / MODEL_FILE
    report = {
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "tensor_types": types,
        "eos_token_id": _gguf_eos_id(source),
    }
    (out / _REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logger.info("Q8_0 GGUF written: %.0f MB, tensors %s", report["bytes"] / 1e6, types)


def _gguf_eos_id(gguf: Path) -> int | None:
    """`tokenizer.ggml.eos_token_id` from a GGUF's metadata (what transformers' GGUF loader puts
    in the torch model's generation config)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.eos_token_id")
    return None if field is None else int(field.contents())
