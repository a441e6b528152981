"""Index files: one `.npz` per index, written to a temporary file and renamed into place.

A composed index (`HybridRetriever.save`) names its part files after the save's generation
(`bm25.<generation>.npz`) and stamps the generation into each part, so parts of two saves can
never be mistaken for one index.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ._types import IndexMismatchError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def write_npz(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` and the JSON `meta` to `path` atomically (temp file, fsync, os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(
        json.dumps({"format": FORMAT_VERSION, **meta}).encode("utf-8"), dtype=np.uint8
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def part_path(directory: Path, file: str, generation: str | None) -> Path:
    """Where a part is saved: `file` itself, or `<stem>.<generation>.npz` for a stamped save."""
    if generation is None:
        return Path(directory) / file
    stem, _, suffix = file.rpartition(".")
    return Path(directory) / f"{stem}.{generation}.{suffix}"


def stamp(meta: dict[str, Any], generation: str | None) -> dict[str, Any]:
    """`meta` with the save's generation recorded (unchanged when there is none)."""
    return meta if generation is None else {**meta, "generation": generation}


def check_generation(path: Path, meta: dict[str, Any], generation: str | None) -> None:
    """Raise IndexMismatchError when a part file does not belong to the expected save."""
    if generation is not None and meta.get("generation") != generation:
        raise IndexMismatchError(
            f"{path} belongs to save {meta.get('generation')!r}, not {generation!r}: "
            "the index is torn; rebuild it"
        )


def read_npz(path: Path, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read what `write_npz` wrote; check that it holds an index of `kind`.

    Raises:
        FileNotFoundError: If `path` does not exist.
        IndexMismatchError: If the file holds another kind of index or another format version.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no index file at {path}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    if meta.get("format") != FORMAT_VERSION or meta.get("kind") != kind:
        raise IndexMismatchError(
            f"{path} holds a {meta.get('kind')!r} index in format {meta.get('format')}, "
            f"expected {kind!r} in format {FORMAT_VERSION}; rebuild the index"
        )
    return meta, arrays


def check_meta(path: Path, meta: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise IndexMismatchError when a saved setting differs from the one in use."""
    for key, want in expected.items():
        if meta.get(key) != want:
            raise IndexMismatchError(
                f"{path} was built with {key}={meta.get(key)!r}, but {want!r} is in use; rebuild the index"
            )
