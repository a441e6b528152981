"""Generator benchmark: load time (cold conversion vs cached), prefill and decode speed, peak RSS,
per model and runtime (torch, openvino), and greedy answers compared across runtimes.

Run by hand (never in tests); each phase runs in its own process so peak RSS is that phase's:

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.generator --cold --write
    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.generator --models qwen2.5-coder-0.5b \
        --runtime torch openvino --questions 8

`--cold` converts each packaged model again into a temporary folder (deleted afterwards) to time
the first load; without it only the cached load is timed. `--questions N` answers the first N
MMLongBench dev questions (their evidence pages' text as the prompt) greedily on each runtime and
counts the answers equal to the first runtime's. `--write` replaces the "## Generator" section of
BENCHMARKS.md with the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Generator"

# Deterministic filler evidence with numbers, names and table-like rows (no data files needed).
_FACTS = [
    "In fiscal {y} the company reported revenue of ${a}.{b} billion and an operating margin of {c}%.",
    "Table {n}: accuracy of model M{n} is {c}.{b} on the dev split and {a}{b}.{c} on the test split.",
    "Figure {n} plots latency against batch size; at batch {a} the median latency is {c} ms.",
    "The survey covered {a}{b}{c} households in {n} regions between {y} and {y2}.",
]


def _evidence(count: int) -> list[str]:
    """`count` distinct synthetic evidence paragraphs."""
    out = []
    for i in range(count):
        template = _FACTS[i % len(_FACTS)]
        out.append(
            template.format(
                y=2001 + i % 20,
                y2=2003 + i % 20,
                a=1 + i % 9,
                b=i % 10,
                c=10 + (7 * i) % 80,
                n=i + 1,
            )
        )
    return out


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(model: str, runtime: str, **changes: object):
    """A benchmark config: CPU, the runtime pinned, no prefix cache (every prefill is real)."""
    from models.config import GeneratorConfig

    return GeneratorConfig(model=model, device="cpu", runtime=runtime, prefix_cache=False, **changes)


def _child_convert(model: str, runtime: str, cache_dir: Path) -> dict:
    """Cold path: join, check and convert the packaged GGUF, then load the cached weights."""
    from models.generator import load_generator

    start = time.perf_counter()
    load_generator(_config(model, runtime), cache_dir=cache_dir)
    return {"cold_load_s": time.perf_counter() - start, "cold_peak_rss_mb": _peak_rss_mb()}


def _child_run(
    model: str, runtime: str, cache_dir: Path, prompt_paragraphs: int, new_tokens: int,
    questions: int,
) -> dict:  # fmt: skip
    """Cached load, then prefill and decode speed on a long synthetic QA prompt, then greedy
    answers to dev questions."""
    import torch

    from models.generator import build_prompt, load_generator

    torch.manual_seed(0)
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()
    generator = load_generator(_config(model, runtime, stop_at_newline=False), cache_dir=cache_dir)
    load_s = time.perf_counter() - start
    question = "What was the revenue in fiscal 2005?"
    inputs = generator.encode(build_prompt(question, _evidence(prompt_paragraphs)))

    generator.generate(build_prompt(question, _evidence(2)), max_new_tokens=1)  # warm-up
    # Prefill: the time to the first token of a one-token answer, best of 2 (both runtimes
    # measured the same way; openvino exposes no separate prefill).
    runs = [generator.generate(inputs, max_new_tokens=1).prefill_s for _ in range(2)]
    prefill_s = min(runs)

    # Decode speed: no EOS, so every run decodes the same number of tokens.
    eos, generator.eos_token_ids = generator.eos_token_ids, frozenset()
    result = generator.generate(inputs, max_new_tokens=new_tokens)
    generator.eos_token_ids = eos
    answers, ttfts = [], []
    for dev_question, pages in _dev_prompts(questions):
        answer = generator.generate(
            build_prompt(dev_question, pages), max_new_tokens=32, stop_at_newline=True
        )
        answers.append(answer.text)
        ttfts.append(answer.ttft_s)
    return {
        "load_s": load_s,
        "prompt_tokens": inputs.num_tokens,
        "prefill_s": prefill_s,
        "prefill_tok_s": inputs.num_tokens / prefill_s,
        "ttft_s": result.ttft_s,
        "new_tokens": result.new_tokens,
        "decode_tok_s": result.decode_tokens_per_s,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": generator.config.threads or torch.get_num_threads(),
        "load_avg": load_at_start,
        "answers": answers,
        "dev_ttft_s": sorted(ttfts)[len(ttfts) // 2] if ttfts else None,
    }


def _dev_prompts(count: int, max_chars: int = 4000) -> list[tuple[str, list[str]]]:
    """The first `count` MMLongBench dev questions with evidence pages, each with the plain text
    of those pages (cut to `max_chars`, about 1,000 tokens) as its evidence."""
    if count == 0:
        return []
    import pymupdf

    data = Path(os.environ.get("FOLIO_SHARED_DATA", ROOT.parent / "shared" / "data"))
    dev = data / "mmlongbench" / "dev"
    samples = json.loads((dev / "samples.json").read_text(encoding="utf-8"))
    out: list[tuple[str, list[str]]] = []
    for sample in samples:
        pages = json.loads(sample["evidence_pages"])
        path = dev / "documents" / sample["doc_id"]
        if not pages or not path.is_file():
            continue
        with pymupdf.open(path) as doc:
            texts = [doc[p - 1].get_text() for p in pages if 0 < p <= doc.page_count]
        budget = max_chars // max(len(texts), 1)
        out.append((sample["question"], [" ".join(t.split())[:budget] for t in texts]))
        if len(out) == count:
            break
    return out


def _spawn(args: list[str]) -> dict:
    """Run one phase in a fresh interpreter and return its JSON line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.generator", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench phase {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], command: str) -> str:
    """The markdown section."""
    load1, load5, _ = os.getloadavg()
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, CPU only, threads = {rows[0]['threads']}; "
        f"load average when finished {load1:.1f} / {load5:.1f} (1 / 5 min; the CPU is shared, "
        'so treat speeds as lower bounds; "load avg" is the 1-minute load when the speed '
        "run started). torch runs fp32, openvino the Q8_0 GGUF with its prefix cache off. "
        "Prefill: best of 2 one-token answers to one synthetic QA prompt. Decode: greedy, "
        "EOS disabled. Cold load: join + sha256 check + conversion (torch: GGUF dequantisation "
        "+ safetensors save; openvino: Q8_0 re-quantisation + tokenizer) + load, in a fresh "
        "process; cached load: `load_generator` on the converted weights. Dev answers: greedy, "
        "stop at newline, equal to the first runtime's answer for that model.",
        "",
        "| model | runtime | cold load s | cold peak RSS MB | cached load s | prompt tokens "
        "| prefill s | prefill tok/s | TTFT s | decode tok/s | peak RSS MB (cached run) "
        "| dev TTFT p50 s | dev answers equal | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cold = f"{row['cold_load_s']:.1f}" if "cold_load_s" in row else "-"
        cold_rss = f"{row['cold_peak_rss_mb']:.0f}" if "cold_peak_rss_mb" in row else "-"
        dev_ttft = f"{row['dev_ttft_s']:.2f}" if row.get("dev_ttft_s") is not None else "-"
        lines.append(
            f"| {row['model']} | {row['runtime']} | {cold} | {cold_rss} | {row['load_s']:.1f} "
            f"| {row['prompt_tokens']} | {row['prefill_s']:.2f} | {row['prefill_tok_s']:.0f} "
            f"| {row['ttft_s']:.2f} | {row['decode_tok_s']:.1f} | {row['peak_rss_mb']:.0f} "
            f"| {dev_ttft} | {row.get('same_answers', '-')} | {row['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _compare_answers(rows: list[dict]) -> None:
    """Mark each row with how many dev answers equal the first runtime's for its model."""
    first: dict[str, list[str]] = {}
    for row in rows:
        reference = first.setdefault(row["model"], row["answers"])
        if row["answers"]:
            same = sum(a == b for a, b in zip(row["answers"], reference, strict=True))
            row["same_answers"] = f"{same}/{len(reference)}"


def _write_section(markdown: str, path: Path) -> None:
    """Replace (or append) the Generator section of BENCHMARKS.md, leaving other sections alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: markdown + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + markdown
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def _measure(model: str, runtime: str, args: argparse.Namespace) -> dict:
    """One model on one runtime: the cold conversion (with --cold), then the cached run."""
    row: dict = {"model": model, "runtime": runtime}
    common = ["--models", model, "--runtime", runtime]
    if args.cold:
        scratch = Path(tempfile.mkdtemp(prefix="bench-cold-", dir=args.cache_dir.parent))
        try:
            row |= _spawn(["--phase", "convert", *common, "--cache-dir", str(scratch)])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    row |= _spawn(
        ["--phase", "run", *common, "--cache-dir", str(args.cache_dir)]
        + ["--paragraphs", str(args.paragraphs), "--new-tokens", str(args.new_tokens)]
        + ["--questions", str(args.questions)]
    )
    return row


def main() -> None:
    """Parse arguments and run each phase in its own process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "gemma3-270m"])
    parser.add_argument(
        "--runtime", nargs="+", choices=["torch", "openvino"], default=["torch"],
        help="runtimes to measure, each model on each (openvino: packaged Qwen models only)",
    )  # fmt: skip
    parser.add_argument("--questions", type=int, default=0, help="dev questions answered")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "folio-library" / "models")
    parser.add_argument("--cold", action="store_true", help="also time a fresh conversion")
    parser.add_argument("--paragraphs", type=int, default=40, help="evidence paragraphs in prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--phase", choices=["convert", "run"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        logging.basicConfig(level=logging.WARNING)
        (model,), (runtime,) = args.models, args.runtime
        if args.phase == "convert":
            out = _child_convert(model, runtime, args.cache_dir)
        else:
            out = _child_run(
                model, runtime, args.cache_dir, args.paragraphs, args.new_tokens, args.questions
            )
        print(json.dumps(out))
        return

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("bench.generator")
    rows = []
    for model in args.models:
        for runtime in args.runtime:
            rows.append(_measure(model, runtime, args))
            log.info(json.dumps({k: v for k, v in rows[-1].items() if k != "answers"}))
    _compare_answers(rows)
    for row in rows:
        for index, answer in enumerate(row["answers"], start=1):
            log.info("%s %s dev %d: %r", row["model"], row["runtime"], index, answer)

    flags = " ".join(sys.argv[1:])
    markdown = _table(rows, f"HF_HUB_OFFLINE=1 .venv/bin/python -m bench.generator {flags}".strip())
    print(markdown)
    if args.write:
        _write_section(markdown, ROOT / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
