"""The remote generator against the in-process one: the answers two `folio eval qa --answers`
runs wrote (same library, questions and model; one `--runtime openai` against a server, one
`--runtime torch`), compared question by question: equal greedy answers, and TTFT and total
time per question with their medians.

    python -m bench.remote_generator REMOTE.jsonl LOCAL.jsonl

BENCHMARKS.md ("Remote generator over the OpenAI protocol") has the commands that write them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _answers(path: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {int(row["index"]): row for row in rows}


def compare(remote: Path, local: Path) -> dict:
    """Per question (index, equal text, remote and local TTFT and total in ms), and medians."""
    a, b = _answers(remote), _answers(local)
    rows = []
    for index in sorted(a.keys() & b.keys()):
        ra, rb = a[index], b[index]
        sa, sb = ra.get("stats") or {}, rb.get("stats") or {}  # none on a failed question
        rows.append(
            {
                "index": index,
                "equal": ra["text"] == rb["text"] and not ra.get("error") and not rb.get("error"),
                "remote_text": ra["text"],
                "local_text": rb["text"],
                "remote_ttft_ms": sa.get("ttft_ms", 0.0),
                "local_ttft_ms": sb.get("ttft_ms", 0.0),
                "remote_total_ms": sa.get("total_ms", 0.0),
                "local_total_ms": sb.get("total_ms", 0.0),
                "remote_error": ra.get("error"),
                "local_error": rb.get("error"),
            }
        )
    ok = [r for r in rows if not r["remote_error"] and not r["local_error"]]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in ok) if ok else 0.0

    return {
        "questions": len(rows),
        "equal": sum(r["equal"] for r in rows),
        "medians_ms": {
            key: round(median(key))
            for key in ("remote_ttft_ms", "local_ttft_ms", "remote_total_ms", "local_total_ms")
        },
        "per_question": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("remote", type=Path, help="answers of the --runtime openai run (JSONL)")
    parser.add_argument("local", type=Path, help="answers of the in-process run (JSONL)")
    args = parser.parse_args()
    report = compare(args.remote, args.local)
    print("| # | equal | TTFT remote / local (s) | total remote / local (s) | answer (remote) |")
    print("|---|---|---|---|---|")
    for r in report["per_question"]:
        print(
            f"| {r['index']} | {'yes' if r['equal'] else 'NO'} | "
            f"{r['remote_ttft_ms'] / 1000:.1f} / {r['local_ttft_ms'] / 1000:.1f} | "
            f"{r['remote_total_ms'] / 1000:.1f} / {r['local_total_ms'] / 1000:.1f} | "
            f"{(r['remote_error'] or r['remote_text'])[:60]} |"
        )
    m = report["medians_ms"]
    print(
        f"\n{report['equal']} of {report['questions']} answers equal; medians: TTFT "
        f"{m['remote_ttft_ms'] / 1000:.2f} s remote vs {m['local_ttft_ms'] / 1000:.2f} s local, "
        f"total {m['remote_total_ms'] / 1000:.2f} s vs {m['local_total_ms'] / 1000:.2f} s"
    )


if __name__ == "__main__":
    main()
