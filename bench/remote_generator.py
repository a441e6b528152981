"""The remote generator against the in-process one: the answers two `folio eval qa --answers`
runs wrote (same library, questions and model; one `--runtime openai` against a server, one
`--runtime torch`), compared question by question: equal greedy answers, and TTFT and total
time per question with their medians.

    python -m bench.remote_generator REMOTE.jsonl LOCAL.jsonl

`--interleave BASE_URL MODEL_FOLDER` instead times the generator alone, the same prompt (the
sample guide's text as evidence) through the server and in-process on the same folder, in
alternation (`--rounds` each), so both see the same machine load.

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


def interleave(base_url: str, folder: str, rounds: int, max_new_tokens: int) -> None:
    """Print TTFT and total of the same greedy answer, remote and in-process, alternating."""
    import tempfile
    import time

    import pymupdf

    from models.config import GeneratorConfig
    from models.generator import build_prompt, load_generator
    from pipeline.ingestion.sample import write_sample_pdf

    with (
        tempfile.TemporaryDirectory() as tmp,
        pymupdf.open(write_sample_pdf(Path(tmp) / "guide.pdf")) as doc,
    ):
        pages = [page.get_text() for page in doc]
    prompt = build_prompt("What is the default chunk size in tokens?", pages)
    local = load_generator(GeneratorConfig(runtime="torch", model=folder, device="cpu"))
    remote = load_generator(
        GeneratorConfig(runtime="openai", base_url=base_url, model=folder, request_timeout_s=600)
    )
    print(f"prompt: {local.encode(prompt).num_tokens} tokens; {rounds} rounds")
    times: dict[str, list[tuple[float, float]]] = {"remote": [], "local": []}
    texts: dict[str, set[str]] = {"remote": set(), "local": set()}
    for _ in range(rounds):
        for name, generator in (("remote", remote), ("local", local)):
            start = time.perf_counter()
            result = generator.generate(prompt, max_new_tokens=max_new_tokens)
            times[name].append((result.ttft_s, time.perf_counter() - start))
            texts[name].add(result.text)
    for name in ("remote", "local"):
        ttft = statistics.median(t for t, _ in times[name])
        total = statistics.median(t for _, t in times[name])
        runs = ", ".join(f"{t:.2f}/{w:.2f}" for t, w in times[name])
        print(
            f"{name}: TTFT median {ttft:.2f} s, total median {total:.2f} s ({runs}); {texts[name]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("remote", nargs="?", type=Path, help="answers of the openai run (JSONL)")
    parser.add_argument("local", nargs="?", type=Path, help="answers of the in-process run (JSONL)")
    parser.add_argument("--interleave", nargs=2, metavar=("BASE_URL", "MODEL_FOLDER"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    if args.interleave:
        interleave(*args.interleave, rounds=args.rounds, max_new_tokens=args.max_new_tokens)
        return
    if args.remote is None or args.local is None:
        parser.error("give REMOTE.jsonl and LOCAL.jsonl, or --interleave BASE_URL MODEL_FOLDER")
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
