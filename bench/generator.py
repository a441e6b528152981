"""Generator benchmark: load time (cold conversion vs cached), prefill and decode speed, peak RSS.

Run by hand (never in tests); each phase runs in its own process so peak RSS is that phase's:

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.generator --cold --write

`--cold` converts each packaged model again into a temporary folder (deleted afterwards) to time
the first load; without it only the cached load is timed. `--write` replaces the "## Generator"
section of BENCHMARKS.md with the table.
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


def _child_convert(model: str, cache_dir: Path) -> dict:
    """Cold path: join, check and convert the packaged GGUF, then load the cached folder."""
    from models.config import GeneratorConfig
    from models.generator import load_generator

    start = time.perf_counter()
    load_generator(GeneratorConfig(model=model, device="cpu"), cache_dir=cache_dir)
    return {"cold_load_s": time.perf_counter() - start, "cold_peak_rss_mb": _peak_rss_mb()}


def _child_run(model: str, cache_dir: Path, prompt_paragraphs: int, new_tokens: int) -> dict:
    """Cached load, then prefill and decode speed on a long synthetic QA prompt."""
    import torch

    from models.config import GeneratorConfig
    from models.generator import build_prompt, load_generator

    torch.manual_seed(0)
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()
    config = GeneratorConfig(model=model, device="cpu", stop_at_newline=False)
    generator = load_generator(config, cache_dir=cache_dir)
    load_s = time.perf_counter() - start
    question = "What was the revenue in fiscal 2005?"
    prompt = build_prompt(question, _evidence(prompt_paragraphs))
    inputs = generator.encode(prompt)

    generator.prefill(generator.encode(build_prompt(question, _evidence(2))))  # warm-up
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        generator.prefill(inputs)
        runs.append(time.perf_counter() - t0)
    prefill_s = min(runs)

    # Decode speed: no EOS, so every run decodes the same number of tokens.
    generator.eos_token_ids = frozenset()
    result = generator.generate(inputs, max_new_tokens=new_tokens)
    return {
        "load_s": load_s,
        "prompt_tokens": inputs.num_tokens,
        "prefill_s": prefill_s,
        "prefill_tok_s": inputs.num_tokens / prefill_s,
        "ttft_s": result.ttft_s,
        "new_tokens": result.new_tokens,
        "decode_tok_s": result.decode_tokens_per_s,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "load_avg": load_at_start,
    }


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
        f"Machine: {os.cpu_count()} cores, CPU only, fp32, torch threads = {rows[0]['threads']}; "
        f"load average when finished {load1:.1f} / {load5:.1f} (1 / 5 min; the CPU is shared, "
        'so treat speeds as lower bounds; "load avg" is the 1-minute load when the speed '
        "run started). Prefill: best of 2 runs of one synthetic QA prompt, "
        "`logits_to_keep=1`. Decode: greedy, EOS disabled, 32 tokens. Cold load: join + sha256 "
        "check + GGUF dequantisation + safetensors save + load, in a fresh process; cached "
        "load: `load_generator` on the converted folder.",
        "",
        "| model | cold load s | cold peak RSS MB | cached load s | prompt tokens | prefill s "
        "| prefill tok/s | TTFT s | decode tok/s | peak RSS MB (cached run) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cold = f"{row['cold_load_s']:.1f}" if "cold_load_s" in row else "-"
        cold_rss = f"{row['cold_peak_rss_mb']:.0f}" if "cold_peak_rss_mb" in row else "-"
        lines.append(
            f"| {row['model']} | {cold} | {cold_rss} | {row['load_s']:.1f} | {row['prompt_tokens']} "
            f"| {row['prefill_s']:.2f} | {row['prefill_tok_s']:.0f} | {row['ttft_s']:.2f} "
            f"| {row['decode_tok_s']:.1f} | {row['peak_rss_mb']:.0f} "
            f"| {row['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _write_section(markdown: str, path: Path) -> None:
    """Replace (or append) the Generator section of BENCHMARKS.md, leaving other sections alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: markdown + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + markdown
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    """Parse arguments and run each phase in its own process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "gemma3-270m"])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "folio-library" / "models")
    parser.add_argument("--cold", action="store_true", help="also time a fresh conversion")
    parser.add_argument("--paragraphs", type=int, default=40, help="evidence paragraphs in prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--phase", choices=["convert", "run"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        logging.basicConfig(level=logging.WARNING)
        (model,) = args.models
        if args.phase == "convert":
            out = _child_convert(model, args.cache_dir)
        else:
            out = _child_run(model, args.cache_dir, args.paragraphs, args.new_tokens)
        print(json.dumps(out))
        return

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("bench.generator")
    rows = []
    for model in args.models:
        row: dict = {"model": model}
        if args.cold:
            scratch = Path(tempfile.mkdtemp(prefix="bench-cold-", dir=args.cache_dir.parent))
            try:
                row |= _spawn(
                    ["--phase", "convert", "--models", model, "--cache-dir", str(scratch)]
                )
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        common = ["--models", model, "--cache-dir", str(args.cache_dir)]
        row |= _spawn(
            ["--phase", "run", *common, "--paragraphs", str(args.paragraphs)]
            + ["--new-tokens", str(args.new_tokens)]
        )
        log.info(json.dumps(row))
        rows.append(row)

    flags = " ".join(sys.argv[1:])
    markdown = _table(rows, f"HF_HUB_OFFLINE=1 .venv/bin/python -m bench.generator {flags}".strip())
    print(markdown)
    if args.write:
        _write_section(markdown, ROOT / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
