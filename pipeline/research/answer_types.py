"""How well `pipeline.answering.answer_types` reads the answer type off a question.

    python -m pipeline.research.answer_types [--samples FILE] [--show-misses]

For each answerable MMLongBench dev question (gold `answer_format` Int, Float, Str or List; the
None questions are answerable questions' twins and say nothing about the type), the inferred
type's benchmark format (`AnswerType.benchmark_format`: integer -> Int, number -> Float, list ->
List, the rest -> Str) is compared with the gold one, per format and per split: the rules were
tuned on the "train" documents only (`pipeline.research.common.split_of`); "val" is held out.
Also reported: how many questions per split and format `needs_arithmetic` flags.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from pipeline.answering.answer_types import infer_type, needs_arithmetic
from pipeline.research.common import SAMPLES, split_of

FORMATS = ("Int", "Float", "Str", "List")


def measure(samples: Path, show_misses: bool = False) -> dict[str, dict[str, dict[str, int]]]:
    """Per split and gold format: questions, types inferred right, questions flagged for
    arithmetic."""
    rows = json.loads(samples.read_text(encoding="utf-8"))
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in ("train", "val"):
        total, right, computed = Counter(), Counter(), Counter()
        for row in rows:
            fmt = row["answer_format"]
            if split_of(row["doc_id"]) != split or fmt not in FORMATS:
                continue
            kind = infer_type(row["question"])
            total[fmt] += 1
            right[fmt] += kind.benchmark_format == fmt
            computed[fmt] += needs_arithmetic(row["question"], kind)
            if show_misses and kind.benchmark_format != fmt:
                question = " ".join(row["question"].split())[:110]
                print(f"{split}  gold {fmt:<5} inferred {kind.value:<9} | {question}")
        out[split] = {
            fmt: {"questions": total[fmt], "right": right[fmt], "compute": computed[fmt]}
            for fmt in FORMATS
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()
    report = measure(args.samples, args.show_misses)
    print("| split | format | questions | type right | accuracy | flagged for arithmetic |")
    print("|---|---|---:|---:|---:|---:|")
    for split, formats in report.items():
        for fmt, row in [*formats.items(), ("all", _sum(formats))]:
            share = row["right"] / row["questions"] if row["questions"] else 0.0
            print(
                f"| {split} | {fmt} | {row['questions']} | {row['right']} | {share:.2f} | "
                f"{row['compute']} |"
            )


def _sum(formats: dict[str, dict[str, int]]) -> dict[str, int]:
    keys = ("questions", "right", "compute")
    return {k: sum(row[k] for row in formats.values()) for k in keys}


if __name__ == "__main__":
    main()
