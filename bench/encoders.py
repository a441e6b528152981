"""Text encoders on torch and OpenVINO, side by side in one process: speed and equality.

Usage:
    python bench/encoders.py [--corpus ../shared/data/ir/cisi] [--passages 1000] [--queries 100]
        [--splade] [--out bench/results/encoders.json]

For each runtime: passages/s encoding `--passages` corpus texts (`encode_documents`, the
ingestion path), and the p50/p95 latency of encoding one query at a time (`encode_queries`,
the search path). The runtimes alternate every 100 passages and every query, on the same texts,
after a warm-up that loads and converts the models, so a busy machine slows both alike. Then the tolerance: per passage,
the cosine and the largest absolute difference of the two L2-normalised vectors (SPLADE: the
largest absolute weight difference).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from models.config import EncoderConfig, EncoderRuntime
from models.encoders import MiniLMEncoder, SpladeEncoder

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = (EncoderRuntime.TORCH, EncoderRuntime.OPENVINO)
_STEP = 100  # passages per timed step (a multiple of the batch size)


def _texts(path: Path, field: str, n: int) -> list[str]:
    """The first n non-empty texts of a BEIR jsonl file (title and text for passages)."""
    out: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            text = " ".join(p for p in (row.get("title", ""), row[field]) if p).strip()
            if text:
                out.append(text)
            if len(out) == n:
                break
    return out


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _compare(make: Callable[[EncoderRuntime], object], passages: list[str], queries: list[str]):
    """Speed of both runtimes on the same texts, and the vectors each gave."""
    encoders = {rt: make(rt) for rt in RUNTIMES}
    for enc in encoders.values():  # load, convert (once, cached) and compile outside the clock
        enc.encode_documents(passages[:8])
        enc.encode_queries(queries[:1])
    parts: dict[EncoderRuntime, list] = {rt: [] for rt in RUNTIMES}
    seconds = dict.fromkeys(RUNTIMES, 0.0)
    for start in range(0, len(passages), _STEP):  # alternate runtimes, a step of passages each
        for rt, enc in encoders.items():
            step = passages[start : start + _STEP]
            out, took = _timed(lambda enc=enc, step=step: enc.encode_documents(step))
            parts[rt].append(out)
            seconds[rt] += took
    vectors = {rt: _stack(parts[rt]) for rt in RUNTIMES}
    rates = {rt: len(passages) / seconds[rt] for rt in RUNTIMES}
    latencies: dict[EncoderRuntime, list[float]] = {rt: [] for rt in RUNTIMES}
    for query in queries:
        for rt, enc in encoders.items():
            latencies[rt].append(_timed(lambda enc=enc, q=query: enc.encode_queries([q]))[1] * 1000)
    rows = {
        rt.value: {
            "passages_per_s": round(rates[rt], 1),
            "query_p50_ms": round(float(np.percentile(latencies[rt], 50)), 2),
            "query_p95_ms": round(float(np.percentile(latencies[rt], 95)), 2),
        }
        for rt in RUNTIMES
    }
    return rows, vectors


def _stack(parts: list):  # noqa: ANN202 - dense arrays or scipy CSR matrices
    import scipy.sparse as sp

    return sp.vstack(parts, format="csr") if sp.issparse(parts[0]) else np.concatenate(parts)


def _dense_tolerance(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {
        "min_cosine": float((a * b).sum(axis=1).min()),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


def _sparse_tolerance(a, b) -> dict[str, float]:  # noqa: ANN001 - scipy CSR matrices
    return {"max_abs_diff": float(abs(a - b).max())}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "ir" / "cisi")
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="EncoderConfig.threads (0: torch's)")
    parser.add_argument("--splade", action="store_true", help="also SPLADE-tiny")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "encoders.json")
    args = parser.parse_args(argv)

    passages = _texts(args.corpus / "corpus.jsonl", "text", args.passages)
    queries = _texts(args.corpus / "queries.jsonl", "text", args.queries)
    report: dict = {"corpus": args.corpus.name, "passages": len(passages), "queries": len(queries)}

    def config(rt: EncoderRuntime) -> EncoderConfig:
        return EncoderConfig(runtime=rt, threads=args.threads)

    rows, vectors = _compare(lambda rt: MiniLMEncoder(config(rt)), passages, queries)
    report["minilm"] = {**rows, "tolerance": _dense_tolerance(*vectors.values())}
    print(json.dumps({"minilm": report["minilm"]}), flush=True)
    if args.splade:
        rows, vectors = _compare(lambda rt: SpladeEncoder(config(rt)), passages, queries)
        report["splade"] = {**rows, "tolerance": _sparse_tolerance(*vectors.values())}
        print(json.dumps({"splade": report["splade"]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
