"""What the research scripts share: the data they read, the dev split, the answerer they drive
and the command line their reports record."""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pipeline.answering.answer import Answerer
from pipeline.answering.types import EvidenceItem
from pipeline.config import AnswerConfig
from pipeline.library.search import LibraryIndex
from pipeline.settings import Settings
from storage import open_library

__all__ = [
    "DOCUMENTS",
    "IR",
    "SAMPLES",
    "SHARED_DATA",
    "command_line",
    "evidence_prompt",
    "open_answerer",
    "split_of",
]

_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("FOLIO_SHARED_DATA", _ROOT.parent / "shared" / "data"))
SAMPLES = SHARED_DATA / "mmlongbench" / "dev" / "samples.json"
DOCUMENTS = SHARED_DATA / "mmlongbench" / "dev" / "documents"
IR = SHARED_DATA / "ir"


def split_of(name: str) -> str:
    """ "val" for about 30% of the documents (by a hash of the file name or id), else "train"."""
    return "val" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10 < 3 else "train"


def command_line(module: str, args: argparse.Namespace, skip: Collection[str] = ()) -> str:
    """`python -m MODULE --flag value ...` for the parsed `args` (sorted; lists space-separated),
    without the flags in `skip` (outputs and machine-specific paths)."""
    flags = " ".join(
        f"--{name.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for name, value in sorted(vars(args).items())
        if name not in skip
    )
    return f"python -m {module} {flags}"


def open_answerer(library: str | Path, config: str | Path | None = None) -> Answerer:
    """The answerer of the library at `library`, configured as `folio --config CONFIG` would be
    (preset or JSON file, then the FOLIO_* environment; its index is `answerer.index`)."""
    settings = Settings.load(config, library=Path(library))
    opened = open_library(settings.storage)
    index = LibraryIndex(opened, settings.retrieval, settings.encoders)
    return Answerer(
        opened,
        index,
        settings.answer,
        settings.generator,
        settings.encoders,
        model_cache=settings.model_cache,
    )


def evidence_prompt(
    answerer: Answerer, question: str, doc: str, config: AnswerConfig
) -> tuple[tuple[EvidenceItem, ...], Any]:
    """The evidence items of `question` in document `doc` (id or file name) and its prompt,
    exactly as `Answerer.stream` builds them (the prompt is None without evidence)."""
    prepared = answerer.prepare(question, doc_ids=[doc], config=config)
    return prepared.items, prepared.prompt
