"""REFRAG on the answering prompt: perplexity of MMLongBench dev answers with compressed evidence.

    HF_HUB_OFFLINE=1 FOLIO_MODEL_CACHE=... python -m pipeline.research.refrag_answers --library LIB \\
        [--limit 24] [--stride 1] [--k 8 16] [--p 0 0.25 0.5] [--json OUT]

Questions come from the held-aside documents (`pipeline.research.common.split_of` == "val"; neither the
projector's training nor URaG's ever saw them). The prompt is the one `Answerer.ask` builds
(hybrid retrieval → WuKong sampler → instructions, numbered evidence, question). For every
question and setting, one forward pass over the prompt followed by the gold answer's tokens:

- full: every evidence token;
- refrag k=K p=P: the evidence in chunks of K tokens; the share P of chunks most similar to the
  question (the stage's query gate) stay tokens, the rest enter as one projected vector each;
- truncation k=K p=P: the evidence cut to the same number of prompt positions, keeping its first
  tokens in prompt order (what a fixed context budget does);
- foreign k=K p=P: as refrag, but every compressed chunk's vector is one of the next question's
  evidence chunks (cycled; with `--foreign-document`, of the next question on another document):
  what the vectors' own content adds, beyond whatever a projector trained on answers learned
  about answers in general;
- dropped k=K p=P: the chunks REFRAG expands, as tokens, and nothing in place of the others
  (what the projected vectors add over the same expanded tokens alone);
- none: the prompt with every evidence item removed.

Perplexity is exp(mean NLL) of the answer's tokens, pooled over questions, and per question
(exp of the mean of each question's mean NLL, so that one long answer does not decide it). `prefill_ms` is the
median wall time of that forward pass (prompt + the short answer), the same work in every setting,
so its ratios show what the shorter prompt buys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import torch

from pipeline.research.common import (
    SAMPLES,
    command_line,
    evidence_prompt,
    open_answerer,
    split_of,
)


def _answer_nll(
    model, prefix: torch.Tensor, answer: torch.Tensor, embed
) -> tuple[float, int, float]:  # noqa: ANN001
    """NLL sum of every answer token after prefix embeddings [1, P, D]; also the seconds taken."""
    inputs = torch.cat([prefix, embed(answer.unsqueeze(0))], dim=1)  # [1, P + n, D]
    t0 = time.perf_counter()
    logits = model(inputs_embeds=inputs, use_cache=False).logits[0].float()  # [P + n, V]
    seconds = time.perf_counter() - t0
    p = prefix.shape[1]
    pred = logits[p - 1 : p - 1 + len(answer)]  # position p-1 predicts answer[0], and so on
    loss = torch.nn.functional.cross_entropy(pred, answer, reduction="sum")
    return float(loss), len(answer), seconds


def _keep(
    embeds: torch.Tensor, segments: list[tuple[int, int]], evidence_budget: int
) -> torch.Tensor:
    """The prompt's embeddings [1, T, D] with only the first `evidence_budget` evidence tokens
    (prompt order); every token outside the evidence stays."""
    mask = torch.ones(embeds.shape[1], dtype=torch.bool)
    left = evidence_budget
    for start, end in segments:
        take = max(0, min(end - start, left))
        mask[start + take : end] = False
        left -= take
    return embeds[:, mask]


def _only_chunks(embeds: torch.Tensor, spans, expanded: tuple[int, ...]) -> torch.Tensor:  # noqa: ANN001
    """The prompt's embeddings [1, T, D] without the evidence chunks not in `expanded`."""
    mask = torch.ones(embeds.shape[1], dtype=torch.bool)
    keep = set(expanded)
    for i, chunk in enumerate(spans):
        if i not in keep:
            mask[chunk.start : chunk.end] = False
    return embeds[:, mask]


def with_foreign_features(plan, features: torch.Tensor):  # noqa: ANN001, ANN201
    """`plan` with every chunk's feature taken from `features` [C', F] (another prompt's chunks,
    cycled): the "foreign" control of this benchmark and of `pipeline.research.refrag_qa --contrast`."""
    cycled = features[torch.arange(len(plan.spans)) % len(features)]
    return dataclasses.replace(plan, features=cycled)


def foreign_index(prompts: list, qi: int, other_document: bool) -> int:  # noqa: ANN001
    """The next question after `qi` (cyclic); with `other_document`, the next on another document."""
    later = [(qi + j) % len(prompts) for j in range(1, len(prompts))] or [qi]
    if other_document:
        doc = prompts[qi][0].doc_id
        return next((i for i in later if prompts[i][0].doc_id != doc), later[0])
    return later[0]


@torch.no_grad()
def run(args: argparse.Namespace) -> dict:
    from models.config import RefragConfig
    from models.refrag import chunk_spans
    from models.urag import layout_prompt
    from pipeline.evaluation.qa import load_qa_questions

    torch.set_num_threads(args.threads)
    questions = [q for q in load_qa_questions(SAMPLES) if split_of(q.doc_id) == "val"]
    questions = questions[:: args.stride][: args.limit]
    answerer = open_answerer(args.library)
    cfg = answerer.config
    generator = answerer.generator()
    model, embed = generator.model, generator.embed_tokens
    compressor = answerer.refrag(RefragConfig(projector=args.projector), generator)
    tokenizer = generator.tokenizer

    def project(features: torch.Tensor) -> torch.Tensor:
        return compressor.projector(features.to(generator.device))

    settings = ["full", "none"]
    for k in args.k:
        for p in args.p:
            settings += [f"refrag k={k} p={p}", f"foreign k={k} p={p}", f"truncation k={k} p={p}"]
            if p > 0:
                settings.append(f"dropped k={k} p={p}")
    nll = {s: 0.0 for s in settings}
    count = {s: 0 for s in settings}
    seconds: dict[str, list[float]] = {s: [] for s in settings}
    positions: dict[str, list[int]] = {s: [] for s in settings}
    per_question: dict[str, list[float]] = {s: [] for s in settings}
    evidence_tokens: list[int] = []
    foreign_same_document = 0  # questions whose foreign vectors come from their own document
    report: dict = {}
    prompts = []  # built first: the "foreign" setting reads the next question's evidence
    for q in questions:
        items, prompt = evidence_prompt(answerer, q.question, q.doc_id, cfg)
        if items:
            prompts.append((q, layout_prompt(generator, prompt)))
    for qi, (q, layout) in enumerate(prompts):
        ids = layout.inputs.input_ids  # [1, T]
        segments = [tuple(s) for s in layout.segments]
        n_evidence = sum(e - s for s, e in segments)
        outside = ids.shape[1] - n_evidence
        answer = torch.tensor(tokenizer(q.answer, add_special_tokens=False)["input_ids"])
        full = embed(ids)  # [1, T, D]
        if qi == 0:  # warm-up: the first forward pass pays one-off costs
            _answer_nll(model, full, answer, embed)
        evidence_tokens.append(n_evidence)

        def record(name: str, prefix: torch.Tensor, extra_s: float = 0.0, answer=answer) -> None:  # noqa: ANN001
            loss, n, spent = _answer_nll(model, prefix, answer, embed)
            nll[name] += loss
            count[name] += n
            per_question[name].append(loss / n)
            seconds[name].append(spent + extra_s)
            positions[name].append(int(prefix.shape[1]))

        record("full", full)
        record("none", _keep(full, segments, 0))
        foreign_q, other = prompts[foreign_index(prompts, qi, args.foreign_document)]
        foreign_same_document += foreign_q.doc_id == q.doc_id
        for k in args.k:
            other_features = compressor.plan(
                other.inputs.input_ids, [tuple(s) for s in other.segments], k=k, expand_fraction=0.0
            ).features  # [C', F]
            for p in args.p:
                t0 = time.perf_counter()
                plan = compressor.plan(ids, segments, k=k, expand_fraction=p, question=q.question)
                comp = compressor.assemble(ids, plan, project(plan.features))
                spent = time.perf_counter() - t0
                prefix = comp.inputs.inputs_embeds
                record(f"refrag k={k} p={p}", prefix, spent)
                foreign_plan = with_foreign_features(plan, other_features)
                foreign = compressor.assemble(ids, foreign_plan, project(foreign_plan.features))
                record(f"foreign k={k} p={p}", foreign.inputs.inputs_embeds)
                record(f"truncation k={k} p={p}", _keep(full, segments, prefix.shape[1] - outside))
                if p > 0:
                    dropped = _only_chunks(full, chunk_spans(segments, k), comp.expanded)
                    record(f"dropped k={k} p={p}", dropped)
        print(f"question {qi + 1}/{len(prompts)}: {ids.shape[1]} prompt tokens, "
              f"{n_evidence} of evidence, answer {len(answer)} tokens", flush=True)  # fmt: skip
        report = _report(args, settings, nll, count, per_question, seconds, positions)
        report["evidence_tokens_mean"] = round(statistics.mean(evidence_tokens), 1)
        report["foreign_same_document"] = foreign_same_document
        if args.json:  # rewritten after every question: an interrupted run keeps its numbers
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    for s, row in report["results"].items():
        print(f"{s:24s} ppl {row['perplexity']:9.3f} (per question {row['perplexity_macro']:9.3f})"
              f"  positions {row['positions']:7.1f}  prefill {row['prefill_ms']:8.1f} ms"
              f"  {row['speedup']:.2f}x", flush=True)  # fmt: skip
    return report


def _report(args, settings, nll, count, per_question, seconds, positions) -> dict:  # noqa: ANN001
    """Pooled perplexity (all answer tokens), per-question perplexity (exp of the mean of each
    question's mean NLL: short answers weigh as much as long ones), positions, prefill time."""
    full_s = statistics.median(seconds["full"])
    rows = {}
    for s in settings:
        med = statistics.median(seconds[s])
        rows[s] = {
            "perplexity": round(math.exp(nll[s] / max(count[s], 1)), 3),
            "perplexity_macro": round(math.exp(statistics.fmean(per_question[s])), 3),
            "positions": round(statistics.mean(positions[s]), 1),
            "prefill_ms": round(med * 1000, 1),
            "speedup": round(full_s / med, 2),
        }
    return {
        "command": command_line("pipeline.research.refrag_answers", args, skip={"json", "library"}),
        "questions": len(per_question["full"]),
        "answer_tokens": count["full"],
        "threads": torch.get_num_threads(),
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True, help="a library holding the dev documents")
    parser.add_argument("--projector", default=None, help="default: the shipped projector")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--p", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--foreign-document", action="store_true",
        help="the foreign vectors come from the next question on another document",
    )  # fmt: skip
    parser.add_argument("--json", default=None)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
