"""REFRAG on held-aside dev text: time-to-first-token and perplexity of the gold continuation.

    python -m pipeline.research.refrag [--passages 24] [--context 512] [--continuation 64] [--json OUT]

Passages come from the documents that `pipeline.research.refrag_train` never saw (`pipeline.research.common.split_of` ==
"val": MMLongBench dev documents and BEIR ids). Each passage is `--context` tokens of context and
the `--continuation` tokens that follow in the document. For every passage and setting, one run:

- full: the whole context as tokens;
- refrag k=K p=P: the context in chunks of K tokens, the share P of them (the ones nearest the
  continuation: recency, as there is no question here) as tokens, the rest one vector each;
- truncation: the last B context tokens, B = the positions REFRAG at the same K and P prefills;
- none: no context.

Perplexity is exp(mean NLL) of the continuation after its first token (the first has no
context in the "none" setting), pooled over passages. TTFT is measured in the same process for
each setting: encoding and projecting the chunks (REFRAG), prefill of the context, and the first
token's logits; medians over passages.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from pathlib import Path

import torch

from pipeline.research.common import command_line
from pipeline.research.refrag_train import corpus_texts, token_stream


def _nll(model, prefix: torch.Tensor, target: torch.Tensor, embed) -> tuple[float, int]:  # noqa: ANN001
    """Sum of NLL of target[1:] after prefix embeddings [1, P, D] (P may be 0) and target[0]."""
    inputs = torch.cat([prefix, embed(target.unsqueeze(0))], dim=1)  # [1, P + n, D]
    logits = model(inputs_embeds=inputs, use_cache=False).logits[0].float()  # [P + n, V]
    p = prefix.shape[1]
    pred = logits[p : p + len(target) - 1]  # positions of target[0..n-2] predict target[1..]
    loss = torch.nn.functional.cross_entropy(pred, target[1:], reduction="sum")
    return float(loss), len(target) - 1


def _ttft(model, inputs_embeds: torch.Tensor | None, extra_s: float = 0.0) -> float:  # noqa: ANN001
    """Seconds to the first token: `extra_s` (compression) + prefill with logits of the last."""
    if inputs_embeds is None or inputs_embeds.shape[1] == 0:
        return extra_s
    t0 = time.perf_counter()
    model(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1)
    return extra_s + time.perf_counter() - t0


@torch.no_grad()
def run(args: argparse.Namespace) -> dict:
    from models.config import GeneratorConfig
    from models.generator import load_generator
    from models.refrag import ChunkEncoder, ChunkProjector, RefragCompressor, chunk_spans

    cache = Path(os.environ.get("FOLIO_MODEL_CACHE", "folio-library/models"))
    generator = load_generator(GeneratorConfig(model=args.model), cache_dir=cache)
    model, embed = generator.model, generator.model.get_input_embeddings()
    projector = ChunkProjector.load(Path(args.projector))
    compressor = RefragCompressor(generator, projector, ChunkEncoder.for_projector(projector))
    docs = token_stream(generator.tokenizer, corpus_texts("val"), seed=args.seed)
    n = args.context + args.continuation
    long_docs = [d for d in docs if len(d) >= n]
    rng = random.Random(args.seed)
    passages = []
    for _ in range(args.passages):
        doc = long_docs[rng.randrange(len(long_docs))]
        start = rng.randrange(len(doc) - n + 1)
        passages.append(doc[start : start + n])
    print(f"{len(passages)} passages from {len(long_docs)} held-aside documents", flush=True)
    # Warm-up: the first forward pass and the first encoder call pay one-off costs.
    compressor.compress(torch.tensor([passages[0][:64]]), [(0, 64)], k=16, expand_fraction=0.0)
    _ttft(model, embed(torch.tensor([passages[0][: args.context]])))

    settings = ["full", "none"]
    for k in args.k:
        for p in args.p:
            settings += [f"refrag k={k} p={p}", f"truncation k={k} p={p}"]
    nll = {s: 0.0 for s in settings}
    count = {s: 0 for s in settings}
    ttft: dict[str, list[float]] = {s: [] for s in settings}
    positions: dict[str, list[int]] = {s: [] for s in settings}
    for i, passage in enumerate(passages):
        context = torch.tensor([passage[: args.context]])  # [1, C]
        target = torch.tensor(passage[args.context :])  # [n]
        full = embed(context)  # [1, C, D]

        def record(name: str, prefix: torch.Tensor, seconds: float, target=target) -> None:  # noqa: ANN001
            loss, tokens = _nll(model, prefix, target, embed)
            nll[name] += loss
            count[name] += tokens
            ttft[name].append(seconds)
            positions[name].append(int(prefix.shape[1]))

        record("full", full, _ttft(model, full))
        record("none", full[:, :0], 0.0)
        for k in args.k:
            spans = chunk_spans([(0, args.context)], k)
            recency = [float(j) for j in range(len(spans))]
            for p in args.p:
                t0 = time.perf_counter()
                comp = compressor.compress(
                    context, [(0, args.context)], k=k, expand_fraction=p, chunk_scores=recency
                )
                spent = time.perf_counter() - t0
                prefix = comp.inputs.inputs_embeds
                record(f"refrag k={k} p={p}", prefix, _ttft(model, prefix, spent))
                budget = prefix.shape[1]
                cut = full[:, args.context - budget :]
                record(f"truncation k={k} p={p}", cut, _ttft(model, cut))
        print(f"passage {i + 1}/{len(passages)}", flush=True)

    full_ttft = statistics.median(ttft["full"])
    rows = {}
    for s in settings:
        ppl = math.exp(nll[s] / max(count[s], 1))
        med = statistics.median(ttft[s])
        rows[s] = {
            "perplexity": round(ppl, 3),
            "positions": round(statistics.mean(positions[s]), 1),
            "ttft_ms": round(med * 1000, 1),
            "ttft_speedup": round(full_ttft / med, 2) if med > 0 else None,
        }
        print(f"{s:28s} ppl {ppl:8.3f}  positions {rows[s]['positions']:6.1f}  TTFT {med * 1000:8.1f} ms", flush=True)
    report = {
        "command": command_line("pipeline.research.refrag", args, skip={"json"}),
        "passages": len(passages),
        "context_tokens": args.context,
        "continuation_tokens": args.continuation,
        "threads": torch.get_num_threads(),
        "results": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--projector", default="models/weights/refrag_projector_d896.pt")
    parser.add_argument("--passages", type=int, default=24)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--continuation", type=int, default=64)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--p", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
