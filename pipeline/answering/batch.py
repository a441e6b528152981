"""Batch question answering: many questions in, answers out in the same order, resumable.

Answers are appended to an output JSONL file as they are made (one line per answer, with the
question's position in `index`), so a killed run loses at most the answer in progress: run the
same batch with the same output file and questions already answered there are skipped (failed
ones are tried again). A line cut short by the kill is dropped. When the batch ends, the file is
rewritten in input order, holding exactly one answer per question.

One question failing (a blank question, an unknown document, a model error) is recorded in its
`Answer.error` and the batch goes on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.answering.types import Answer

logger = logging.getLogger(__name__)

__all__ = [
    "BatchProgress",
    "BatchQuestion",
    "answer_one",
    "as_batch",
    "load_batch",
    "run_batch",
    "run_batch_parallel",
]


@dataclass(frozen=True)
class BatchQuestion:
    """One question of a batch.

    Attributes:
        question: The question text.
        doc_ids: Only these documents (ids, id prefixes or file names); None: the whole library.
        id: The caller's id, carried into the answer.
        error: Why the input could not be read (the answer records it instead of answering).
    """

    question: str
    doc_ids: tuple[str, ...] | None = None
    id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchProgress:
    """Progress of a batch: `done` of `total` questions, and the latest answer."""

    done: int
    total: int
    answer: Answer
    resumed: bool  # the answer was read from the output file, not made now


def as_batch(
    questions: Iterable[str | Mapping[str, Any] | BatchQuestion],
    *,
    doc_ids: Sequence[str] | None = None,
) -> list[BatchQuestion]:
    """Questions as `BatchQuestion`s.

    Args:
        questions: Strings, dicts with `question` (and optionally `doc_id` or `doc_ids`, `id`),
            or `BatchQuestion`s.
        doc_ids: Documents for questions that name none.

    Returns:
        One `BatchQuestion` per input; an unreadable one carries its `error`.
    """
    default = tuple(doc_ids) if doc_ids else None
    out: list[BatchQuestion] = []
    for position, item in enumerate(questions):
        if isinstance(item, BatchQuestion):
            out.append(item if item.doc_ids or not default else _with_docs(item, default))
        elif isinstance(item, str):
            out.append(BatchQuestion(item, default))
        elif isinstance(item, Mapping):
            out.append(_from_mapping(item, default, f"question {position}"))
        else:
            out.append(
                BatchQuestion(str(item), default, error=f"question {position}: not text or a dict")
            )
    return out


def load_batch(path: Path, *, doc_ids: Sequence[str] | None = None) -> list[BatchQuestion]:
    """Questions from a JSONL file (or a JSON list): one question per line.

    A line is a JSON string, or an object with `question` and optionally `doc_id` / `doc_ids`
    and `id` (MMLongBench's `samples.json` reads as is). A line that is not such JSON becomes a
    question carrying an error, so that it is reported in order rather than failing the batch.

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return as_batch(json.loads(text), doc_ids=doc_ids)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON list ({exc.msg}, line {exc.lineno})") from exc
    default = tuple(doc_ids) if doc_ids else None
    out: list[BatchQuestion] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(
                BatchQuestion(line.strip(), default, error=f"line {lineno}: not JSON ({exc.msg})")
            )
            continue
        if isinstance(value, str):
            out.append(BatchQuestion(value, default))
        elif isinstance(value, Mapping):
            out.append(_from_mapping(value, default, f"line {lineno}"))
        else:
            out.append(BatchQuestion(line.strip(), default, error=f"line {lineno}: not a question"))
    return out


def run_batch(
    questions: Sequence[BatchQuestion],
    ask: Callable[[BatchQuestion], Answer],
    *,
    out: Path | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
) -> list[Answer]:
    """Answer every question in order, recording failures, resuming from `out`.

    Args:
        questions: The batch.
        ask: Answers one question (may raise: the error is recorded in that answer).
        out: JSONL file the answers are appended to as they come, and resumed from.
        on_progress: Called after every question (answered now or found in `out`).

    Returns:
        One `Answer` per question, in input order.
    """

    def answer_in_order(todo: Sequence[tuple[int, BatchQuestion]]) -> Iterator[tuple[int, Answer]]:
        for position, item in todo:
            yield position, answer_one(item, ask)

    return run_batch_parallel(questions, answer_in_order, out=out, on_progress=on_progress)


def run_batch_parallel(
    questions: Sequence[BatchQuestion],
    answer_all: Callable[[Sequence[tuple[int, BatchQuestion]]], Iterable[tuple[int, Answer]]],
    *,
    out: Path | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
) -> list[Answer]:
    """`run_batch` for answers made in any order, e.g. by a pool of workers.

    Args:
        questions: The batch.
        answer_all: Gets the (position, question) pairs not already answered in `out`, in
            input order, and yields one (position, answer) for each as it is made (use
            `answer_one` to turn a failure into its answer).
        out: JSONL file the answers are appended to as they come (each with its position), and
            resumed from; rewritten in input order at the end.
        on_progress: Called after every question; answers found in `out` are reported in input
            order among the new ones.

    Returns:
        One `Answer` per question, in input order.
    """
    total = len(questions)
    done = _read_done(out, questions) if out is not None else {}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_lines(out, [_line(i, done[i]) for i in sorted(done)])  # drops a cut-off line
    answers: dict[int, Answer] = dict(done)
    resumed = iter(sorted(done))
    next_resumed = next(resumed, total)
    reported = 0

    def report(position: int, answer: Answer, was_resumed: bool) -> None:
        nonlocal reported
        reported += 1
        if on_progress is not None:
            on_progress(BatchProgress(reported, total, answer, was_resumed))

    handle = out.open("a", encoding="utf-8") if out is not None else None
    made = iter(answer_all([(i, item) for i, item in enumerate(questions) if i not in done]))
    try:
        for position, answer in made:
            if handle is not None:
                handle.write(_line(position, answer) + "\n")
                handle.flush()
            answers[position] = answer
            while next_resumed < position:
                report(next_resumed, answers[next_resumed], True)
                next_resumed = next(resumed, total)
            report(position, answer, False)
        while next_resumed < total:
            report(next_resumed, answers[next_resumed], True)
            next_resumed = next(resumed, total)
    finally:
        if hasattr(made, "close"):
            made.close()  # a generator stops its workers now, not when it is collected
        if handle is not None:
            handle.close()
    assert len(answers) == total, "answer_all must yield one answer per question it was given"
    ordered = [answers[i] for i in range(total)]
    if out is not None:
        _write_lines(out, [_line(i, a) for i, a in enumerate(ordered)])
    return ordered


def answer_one(item: BatchQuestion, ask: Callable[[BatchQuestion], Answer]) -> Answer:
    """`ask(item)`, or an `Answer` recording why the question could not be answered."""
    if item.error is not None:
        return Answer.failed(item.question, item.error, doc_ids=item.doc_ids or (), id=item.id)
    try:
        return ask(item)
    except Exception as exc:  # noqa: BLE001 - one bad question must never stop a batch
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        logger.warning("question %r failed: %s", item.question[:80], message)
        return Answer.failed(item.question, message, doc_ids=item.doc_ids or (), id=item.id)


# ------------------------------------------------------------------------------- helpers


def _from_mapping(
    value: Mapping[str, Any], default: tuple[str, ...] | None, where: str
) -> BatchQuestion:
    question = value.get("question")
    docs = value.get("doc_ids", value.get("doc_id"))
    if isinstance(docs, str):
        docs = (docs,)
    elif docs is not None:
        docs = tuple(str(d) for d in docs)
    qid = value.get("id")
    qid = None if qid is None else str(qid)
    if not isinstance(question, str):
        return BatchQuestion(
            json.dumps(dict(value))[:200], docs or default, qid, f"{where}: no 'question' text"
        )
    return BatchQuestion(question, docs or default, qid)


def _with_docs(item: BatchQuestion, docs: tuple[str, ...]) -> BatchQuestion:
    return BatchQuestion(item.question, docs, item.id, item.error)


def _line(position: int, answer: Answer) -> str:
    return json.dumps({"index": position, **answer.to_dict()}, ensure_ascii=False)


def _read_done(out: Path, questions: Sequence[BatchQuestion]) -> dict[int, Answer]:
    """Answers already in `out` for these questions (same position and text, no error)."""
    if not out.is_file():
        return {}
    done: dict[int, Answer] = {}
    for lineno, line in enumerate(out.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            position = int(record.pop("index"))
            answer = Answer.from_dict(record)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.info(
                "%s line %d: unreadable (cut short by a killed run?); redoing it", out, lineno
            )
            continue
        if (
            0 <= position < len(questions)
            and answer.question == questions[position].question
            and answer.error is None
        ):
            done[position] = answer
    if done:
        logger.info(
            "%s: resuming, %d of %d questions already answered", out, len(done), len(questions)
        )
    return done


def _write_lines(path: Path, lines: list[str]) -> None:
    """Replace `path` with `lines` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)
