"""Answerability (issue 23): collect the check's features on dev questions, fit the decision on
the train documents, report it on the val documents.

    # 1. features: draft answer, verification log-odds, retrieval scores, timings (resumable)
    python -m bench.answerability collect --library LIB --split train --stride 2 --out train.jsonl
    python -m bench.answerability collect --library LIB --split val --out val.jsonl
    # 2. fit on train only; writes pipeline/answering/answerability.json
    python -m bench.answerability fit train.jsonl
    # 3. Not-answerable precision/recall and accuracy with and without the lever, on val
    python -m bench.answerability report val.jsonl

`collect` runs exactly what `Answerer.stream` runs with the check on (prepare, generate, then
the verification turn through `GeneratorBase.choice_logprobs`, the runtime's prefix cache serving
the prompt), but keeps the features instead of deciding, so one pass serves the fit and both
sides of the report: the lever changes only whether the draft is replaced by "Not answerable".
The split is `pipeline.research.common.split_of` on the document's file name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.answering.answerability import (
    CALIBRATION_FILE,
    FEATURES,
    NO_WORDS,
    VERIFY_QUESTION,
    YES_WORDS,
    Calibration,
    features_of,
    verify_log_odds,
)
from pipeline.answering.types import MARKER
from pipeline.evaluation.qa import load_qa_questions
from pipeline.evaluation.scoring import (
    NOT_ANSWERABLE,
    ScoredAnswer,
    aggregate,
    is_not_answerable,
    score_answer,
)
from pipeline.research.common import SAMPLES, command_line, open_answerer, split_of


def collect(args: argparse.Namespace) -> None:
    """Answer the split's questions and append one JSON line of features per question."""
    questions = [
        (i, q)
        for i, q in enumerate(load_qa_questions(Path(args.samples)))
        if split_of(q.doc_id) == args.split
    ][:: args.stride]
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {json.loads(line)["index"] for line in out.read_text().splitlines() if line.strip()}
    answerer = open_answerer(args.library, args.config)
    config = answerer.config.model_copy(update={"answerability": False})
    todo = [(i, q) for i, q in questions if i not in done]
    print(f"{len(questions)} {args.split} questions, {len(todo)} to do", file=sys.stderr)
    with out.open("a", encoding="utf-8") as sink:
        for n, (index, q) in enumerate(todo, start=1):
            try:
                row = _one(answerer, config, index, q)
            except LookupError as exc:  # not ingested (yet): a rerun picks it up
                print(f"[{n}/{len(todo)}] skipped: {exc}", file=sys.stderr)
                continue
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(
                f"[{n}/{len(todo)}] {q.doc_id[:30]} gold={q.answer[:20]!r} "
                f"draft={row['draft'][:30]!r} lo={row['features'].get('verify_log_odds')} "
                f"{row['total_ms'] / 1000:.1f}s",
                file=sys.stderr,
            )


def _one(answerer: Any, config: Any, index: int, q: Any) -> dict[str, Any]:
    started = time.perf_counter()
    row: dict[str, Any] = {
        "index": index,
        "doc_id": q.doc_id,
        "question": q.question,
        "gold": q.answer,
        "answer_format": q.answer_format,
    }
    prepared = answerer.prepare(q.question, doc_ids=[q.doc_id], config=config)
    if not prepared.answerable:
        return {**row, "draft": NOT_ANSWERABLE, "no_evidence": True, "features": {},
                "total_ms": (time.perf_counter() - started) * 1000, "verify_ms": 0.0}  # fmt: skip
    run = answerer.generate(prepared)
    for _ in run:
        pass
    draft = run.result.text
    generated_ms = (time.perf_counter() - started) * 1000
    generator = answerer.generator(prepared.generator_config)
    t0 = time.perf_counter()
    inputs = generator.encode(prepared.prompt)
    suffix = generator.follow_up(prepared.prompt, draft, VERIFY_QUESTION)
    scores = generator.choice_logprobs(inputs, suffix, YES_WORDS + NO_WORDS)
    verify_ms = (time.perf_counter() - t0) * 1000
    return {
        **row,
        "draft": draft,
        "no_evidence": False,
        "features": features_of(prepared, verify_log_odds(scores.logprobs)),
        "logprobs": list(scores.logprobs),
        "runtime": generator.runtime,
        "generated_ms": generated_ms,
        "verify_ms": verify_ms,
        "total_ms": generated_ms + verify_ms,
    }


def _rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _declined_by_model(row: dict[str, Any]) -> bool:
    return row["no_evidence"] or is_not_answerable(MARKER.sub("", row["draft"]))


def _is_na(row: dict[str, Any]) -> bool:
    return row["answer_format"] == "None" or row["gold"].strip().lower() == "not answerable"


def _scores(rows: list[dict[str, Any]], calibration: Calibration | None) -> dict[str, Any]:
    """Accuracy, F1 and Not-answerable precision/recall with the lever (`calibration`) or
    without (None)."""
    scored = []
    for row in rows:
        prediction = MARKER.sub("", row["draft"]).strip()
        declined = _declined_by_model(row)
        if calibration is not None and not declined and row["features"]:
            declined = calibration.probability(row["features"]) < calibration.threshold
        if declined:
            prediction = NOT_ANSWERABLE
        score = score_answer(prediction, row["gold"], row["answer_format"])
        scored.append(ScoredAnswer(prediction, row["gold"], row["answer_format"], score))
    totals = aggregate(scored)
    return {
        "questions": totals.questions,
        "accuracy": round(totals.accuracy, 4),
        "f1": round(totals.f1, 4),
        "na_precision": round(totals.na_precision, 4),
        "na_recall": round(totals.na_recall, 4),
        "declined": sum(s.declined for s in scored),
    }


def fit(args: argparse.Namespace) -> None:
    """Logistic regression of "answerable" on the features (train rows only), then the threshold
    that maximises the train Not-answerable F1 (ties: accuracy); writes the calibration JSON."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rows = [r for r in _rows(args.features) if r["features"]]
    if any(split_of(r["doc_id"]) != "train" for r in rows):
        raise SystemExit("fit reads train-split questions only")
    x = np.array([[r["features"][f] for f in FEATURES] for r in rows])
    y = np.array([0 if _is_na(r) else 1 for r in rows])
    model = LogisticRegression(C=args.c, max_iter=1000).fit(x, y)
    weights = dict(zip(FEATURES, (round(float(w), 5) for w in model.coef_[0]), strict=True))
    bias = round(float(model.intercept_[0]), 5)
    best: tuple[Any, ...] | None = None
    for threshold in np.round(np.arange(0.05, 0.96, 0.01), 2):
        calibration = Calibration(weights, bias, float(threshold))
        s = _scores(rows, calibration)
        na_f1 = (
            2 * s["na_precision"] * s["na_recall"] / (s["na_precision"] + s["na_recall"])
            if s["na_precision"] + s["na_recall"] > 0
            else 0.0
        )
        # The decision's own quality first (declining every wrong draft would raise accuracy
        # and F1 while most declines hit answerable questions), then accuracy.
        key = (round(na_f1, 4), s["accuracy"])
        if best is None or key > best[0]:
            best = (key, float(threshold), s)
    assert best is not None
    _, threshold, train_scores = best
    source = (
        f"bench/answerability.py fit on {len(rows)} questions of the MMLongBench dev train "
        f"documents (split_of), {date.today().isoformat()}; features by "
        f"`{args.collect_command or 'python -m bench.answerability collect --split train'}`; "
        f"threshold maximises train Not-answerable F1, then accuracy"
    )
    data = {
        "features": list(FEATURES),
        "weights": weights,
        "bias": bias,
        "threshold": threshold,
        "train": {"without": _scores(rows, None), "with": train_scores},
        "source": source,
    }
    out = Path(args.out)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(data, indent=2))


def report(args: argparse.Namespace) -> None:
    """The val report: without and with the lever, and the check's time per question."""
    from pipeline.answering.answerability import load_calibration

    rows = _rows(args.features)
    if any(split_of(r["doc_id"]) != "val" for r in rows):
        raise SystemExit("report reads val-split questions only")
    calibration = load_calibration(Path(args.calibration))
    checked = [r for r in rows if r["features"]]
    out = {
        "without": _scores(rows, None),
        "with": _scores(rows, calibration),
        "gold_not_answerable": sum(_is_na(r) for r in rows),
        "verify_ms_p50": round(statistics.median(r["verify_ms"] for r in checked), 1),
        "answer_ms_p50": round(statistics.median(r["generated_ms"] for r in checked), 1),
    }
    print(json.dumps(out, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--library", required=True)
    c.add_argument("--config", default=None)
    c.add_argument("--samples", default=str(SAMPLES))
    c.add_argument("--split", choices=("train", "val"), required=True)
    c.add_argument("--stride", type=int, default=1)
    c.add_argument("--out", required=True)
    f = sub.add_parser("fit")
    f.add_argument("features")
    f.add_argument("--c", type=float, default=1.0, help="Inverse L2 strength.")
    f.add_argument("--out", default=str(CALIBRATION_FILE))
    f.add_argument("--collect-command", default="")
    r = sub.add_parser("report")
    r.add_argument("features")
    r.add_argument("--calibration", default=str(CALIBRATION_FILE))
    args = parser.parse_args()
    if args.command == "collect":
        print(command_line("bench.answerability collect", args, skip=("library", "out", "samples")),
              file=sys.stderr)  # fmt: skip
    {"collect": collect, "fit": fit, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
