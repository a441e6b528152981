"""Issue 23's ablation: `folio eval qa --json` reports of the same questions, one per lever
setting, side by side as Markdown tables.

    python -m bench.levers off=off.json typed=typed.json all=all.json --without-check all

For each report: accuracy, F1 and Not-answerable precision / recall on every question and on the
val documents alone (`pipeline.research.common.split_of`: the answerability check was fitted and
the answer-type rules were written on train documents); accuracy by evidence source and by answer
format; the share of cited pages that are evidence pages (answerable questions); the share of
answerable questions whose prompt held all their evidence pages, and the accuracy on those
(finding against reading); median time to first token and total time per question. `--without-check NAME` adds a row for a report made
with the answerability check on, scoring each draft the check replaced (the lever only replaces
drafts, so one run measures both sides).

A lever that changes only some questions is measured by answering those alone:
`NAME=BASE.json+PATCH.json` is BASE with each question that PATCH answered replaced by PATCH's
row (e.g. computed answers: only the questions flagged for arithmetic take another path).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.answering.types import without_markers
from pipeline.evaluation.qa import draft_prediction, patched_rows
from pipeline.evaluation.scoring import ScoredAnswer, aggregate, score_answer
from pipeline.research.common import split_of

SOURCES = {  # MMLongBench's evidence sources, as the issue names them
    "Pure-text (Plain-text)": "text",
    "Table": "table",
    "Chart": "chart",
    "Figure": "figure",
    "Generalized-text (Layout)": "layout",
}
Row = dict[str, Any]


def load_rows(path: Path) -> list[Row]:
    """The per-question rows of an `eval qa --json` report."""
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    return report["per_question"]


def load_spec(path_spec: str) -> list[Row]:
    """The rows of `BASE.json` or `BASE.json+PATCH.json[+...]`."""
    base, *patches = path_spec.split("+")
    rows = load_rows(Path(base))
    for patch in patches:
        rows = patched_rows(rows, load_rows(Path(patch)))
    return rows


def without_check(rows: Sequence[Row]) -> list[Row]:
    """The rows as they would have been had the answerability check kept every draft."""
    out = []
    for row in rows:
        check = row.get("answerability")
        if not check or check["answerable"] or row["error"]:
            out.append(row)
            continue
        kept = draft_prediction(
            check["draft"], row["question"], row["answer_type"], row["computed"]
        )
        out.append(
            {
                **row,
                "prediction": kept,
                "short": kept,
                "score": score_answer(kept, row["gold"], row["answer_format"]),
                "declined": False,
            }
        )
    return out


def _scored(row: Row) -> ScoredAnswer:
    if row["error"]:
        return ScoredAnswer("<error>", row["gold"], row["answer_format"], 0.0)
    prediction = row["short"] or without_markers(row["prediction"])
    return ScoredAnswer(prediction, row["gold"], row["answer_format"], row["score"])


def summary(rows: Sequence[Row]) -> dict[str, float]:
    """Headline numbers of a set of rows."""
    totals = aggregate([_scored(r) for r in rows])
    cited = evidence = 0
    for r in rows:
        if r["answer_format"] != "None" and r["evidence_pages"]:
            cited += len(r["cited_pages"])
            evidence += len(set(r["cited_pages"]) & set(r["evidence_pages"]))
    # Finding against reading: answerable questions whose prompt held every evidence page.
    held = [r for r in rows if r["answer_format"] != "None" and r["prompt_page_recall"] == 1.0]
    answerable = sum(r["answer_format"] != "None" for r in rows)
    ttfts = [r["ttft_ms"] for r in rows if r.get("new_tokens")]
    totals_ms = [r["total_ms"] for r in rows if r.get("total_ms")]
    return {
        "questions": totals.questions,
        "accuracy": totals.accuracy,
        "f1": totals.f1,
        "na_precision": totals.na_precision,
        "na_recall": totals.na_recall,
        "declined": sum(_scored(r).declined for r in rows),
        "cited_precision": evidence / cited if cited else 0.0,
        "evidence_held": len(held) / answerable if answerable else 0.0,
        "accuracy_held": statistics.fmean(r["score"] for r in held) if held else 0.0,
        "ttft_s": statistics.median(ttfts) / 1000 if ttfts else 0.0,
        "total_s": statistics.median(totals_ms) / 1000 if totals_ms else 0.0,
    }


def accuracy_by(
    rows: Sequence[Row], key: Callable[[Row], Sequence[str]]
) -> dict[str, tuple[int, float]]:
    """(questions, accuracy) per group; a row may sit in several groups."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        for name in key(r):
            groups.setdefault(name, []).append(r["score"] if not r["error"] else 0.0)
    return {name: (len(s), statistics.fmean(s)) for name, s in sorted(groups.items())}


def _sources(row: Row) -> list[str]:
    return [SOURCES.get(s, s) for s in row.get("sources", ())]


def tables(runs: dict[str, list[Row]]) -> str:
    """The Markdown tables of the runs, in the order given."""
    lines = [
        "| lever setting | accuracy | F1 | NA P / R (declined) | val accuracy | val F1 | val NA P / R"
        " | cited pages that are evidence | prompt holds the evidence pages | accuracy then"
        " | TTFT p50 | total p50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in runs.items():
        a = summary(rows)
        v = summary([r for r in rows if split_of(r["doc_id"]) == "val"])
        lines.append(
            f"| {name} | {a['accuracy']:.3f} | {a['f1']:.3f} | {a['na_precision']:.2f} / "
            f"{a['na_recall']:.2f} ({a['declined']}) | {v['accuracy']:.3f} | {v['f1']:.3f} | "
            f"{v['na_precision']:.2f} / {v['na_recall']:.2f} | {a['cited_precision']:.2f} | "
            f"{a['evidence_held']:.2f} | {a['accuracy_held']:.3f} | "
            f"{a['ttft_s']:.1f} s | {a['total_s']:.1f} s |"
        )
    for title, key in (
        ("accuracy by evidence source (all / val documents)", _sources),
        ("accuracy by answer format (all / val documents)", lambda r: [r["answer_format"]]),
    ):
        names = sorted({g for rows in runs.values() for r in rows for g in key(r)})
        first = next(iter(runs.values()))
        counts = accuracy_by(first, key)
        val_counts = accuracy_by([r for r in first if split_of(r["doc_id"]) == "val"], key)
        header = " | ".join(
            f"{g} ({counts.get(g, (0, 0))[0]} / {val_counts.get(g, (0, 0))[0]})" for g in names
        )
        lines += [
            "",
            f"{title}:",
            "",
            f"| lever setting | {header} |",
            "|---" * (len(names) + 1) + "|",
        ]
        for name, rows in runs.items():
            every = accuracy_by(rows, key)
            val = accuracy_by([r for r in rows if split_of(r["doc_id"]) == "val"], key)
            cells = " | ".join(
                f"{every.get(g, (0, 0.0))[1]:.3f} / {val.get(g, (0, 0.0))[1]:.3f}" for g in names
            )
            lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs",
        nargs="+",
        help="NAME=REPORT.json or NAME=BASE.json+PATCH.json, in the order to show",
    )
    parser.add_argument(
        "--without-check",
        action="append",
        default=[],
        metavar="NAME",
        help="also show run NAME (answerability check on) with every draft kept",
    )
    args = parser.parse_args()
    runs: dict[str, list[Row]] = {}
    for spec in args.runs:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"{spec}: give NAME=REPORT.json")
        try:
            rows = load_spec(path)
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"{spec}: {exc}")
        if name in args.without_check:
            runs[f"{name}, check's drafts kept"] = without_check(rows)
        runs[name] = rows
    questions = {len(rows) for rows in runs.values()}
    if len(questions) != 1:
        parser.error(f"the reports hold different numbers of questions: {sorted(questions)}")
    print(tables(runs))


if __name__ == "__main__":
    main()
