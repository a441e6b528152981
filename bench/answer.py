"""Answering throughput: `Folio.ask_batch` against a loop of `Folio.ask`, in questions per minute.

Run by hand (never in tests). Each mode runs in its own process on the same questions; the models
are loaded and warmed by one question on another document first, so the timed part is answering
only (the load is reported apart):

    HF_HUB_OFFLINE=1 FOLIO_MODEL_CACHE=folio-library/models \\
        .venv/bin/python -m bench.answer --library LIB --questions 8 --rounds 2

Questions: the first N of the stride-8 dev subset of MMLongBench (`folio eval qa --stride 8`),
each asked of its own document.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "mmlongbench" / "dev" / "samples.json"


def _questions(n: int) -> tuple[list[dict], dict]:
    from pipeline.evaluation.qa import load_qa_questions
    from pipeline.ingestion.parse import sha256_file

    questions = load_qa_questions(SAMPLES)[::8]
    docs = SAMPLES.parent / "documents"
    chosen = questions[:n]
    warm = next(q for q in questions[n:] if q.doc_id not in {c.doc_id for c in chosen})
    as_dict = [
        {"question": q.question, "doc_id": sha256_file(docs / q.doc_id), "id": str(i)}
        for i, q in enumerate(chosen)
    ]
    return as_dict, {"question": warm.question, "doc_id": sha256_file(docs / warm.doc_id)}


def _run(mode: str, library: str, n: int) -> dict:
    """One mode in this process: warm up, then answer the questions; returns the timings."""
    from app import Folio

    items, warm = _questions(n)
    folio = Folio(library=library)
    t0 = time.perf_counter()
    folio.ask(warm["question"], doc_ids=[warm["doc_id"]])
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if mode == "batch":
        answers = folio.ask_batch(items)
    else:
        answers = [folio.ask(i["question"], doc_ids=[i["doc_id"]]) for i in items]
    seconds = time.perf_counter() - t1
    return {
        "mode": mode,
        "questions": len(answers),
        "failed": sum(a.error is not None for a in answers),
        "seconds": round(seconds, 1),
        "questions_per_min": round(len(answers) / seconds * 60, 2),
        "warmup_s": round(load_s, 1),
        "texts": [a.text for a in answers],
        "load": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True, help="Library holding the dev documents.")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--mode", choices=["loop", "batch"], help="Run one mode here (internal).")
    parser.add_argument(
        "--rounds", type=int, default=2,
        help="Rounds of both modes, the order swapped each round (the first run of a session "
        "also pays for cold disk caches).",
    )  # fmt: skip
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(_run(args.mode, args.library, args.questions)))
        return
    results: dict[str, list[dict]] = {"loop": [], "batch": []}
    for round_ in range(args.rounds):
        for mode in ("loop", "batch") if round_ % 2 == 0 else ("batch", "loop"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.answer", "--library", args.library,
                 "--questions", str(args.questions), "--mode", mode],
                capture_output=True, text=True, check=True, cwd=ROOT,
            )  # fmt: skip
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            shown = {k: v for k, v in results[mode][-1].items() if k != "texts"}
            print(json.dumps({"round": round_ + 1} | shown), flush=True)
    for mode, runs in results.items():
        rates = sorted(r["questions_per_min"] for r in runs)
        print(f"{mode}: questions/min per round {rates}, best {rates[-1]}")
    texts = [r["texts"] for runs in results.values() for r in runs]
    print(f"same answers in every run: {all(t == texts[0] for t in texts)}")


if __name__ == "__main__":
    main()
