"""Fine-tune the REFRAG projector to answer questions over compressed evidence.

    HF_HUB_OFFLINE=1 FOLIO_MODEL_CACHE=... python -m pipeline.research.refrag_qa --library LIB \\
        --init PROJECTOR.pt --out OUT.pt [--epochs 2] [--k 8 16] [--p 0 0.25] [--prompts FILE]

Why: reconstruction and continued pre-training (`pipeline.research.refrag_train`) teach the projector to
continue document text, and on held-aside text that improves with more steps, but on the
answering prompt the vectors added nothing (BENCHMARKS, REFRAG). This objective is the task
itself: the prompt `Answerer.ask` builds, its evidence compressed by the stage's own policy,
and the loss on the gold answer's tokens after it. Encoder and decoder stay frozen; only the
projector learns.

Data: the MMLongBench dev questions of the train documents (`pipeline.research.common.split_of` == "train";
`pipeline.research.refrag_answers` measures the held-aside "val" documents, never seen here). Their prompts
(hybrid retrieval -> WuKong sampler -> instructions, numbered evidence, question) are built once
and kept in `--prompts`, so a rerun skips retrieval (delete it after changing the library, the
model or the pipeline's settings). Each step takes one question, draws k from
`--k` and p from `--p`, lets the query gate pick the expanded chunks, and steps on the answer's
cross-entropy. The settings, the initial projector's own settings and the loss curve go into the
weights file; the same arguments reproduce it (seeded).
"""

from __future__ import annotations

import argparse
import hashlib
import random
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
from pipeline.research.refrag_answers import with_foreign_features


def build_prompts(answerer, path: Path) -> list[dict]:  # noqa: ANN001
    """Per train-document question with evidence: its prompt ids, evidence segments and answer
    (read from `path` when an earlier run wrote it)."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    from models.urag import layout_prompt
    from pipeline.evaluation.qa import load_qa_questions

    questions = [q for q in load_qa_questions(SAMPLES) if split_of(q.doc_id) == "train"]
    generator = answerer.generator()
    rows = []
    t0 = time.perf_counter()
    for i, q in enumerate(questions):
        items, prompt = evidence_prompt(answerer, q.question, q.doc_id, answerer.config)
        if not items:
            continue
        layout = layout_prompt(generator, prompt)
        answer = generator.tokenizer(q.answer, add_special_tokens=False)["input_ids"]
        rows.append({
            "question": q.question,
            "doc_id": q.doc_id,
            "ids": layout.inputs.input_ids[0].tolist(),
            "segments": [list(s) for s in layout.segments],
            "answer": answer,
        })  # fmt: skip
        print(f"prompt {i + 1}/{len(questions)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(rows, path)
    return rows


def answer_loss(compressor, plan, input_ids: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Mean cross-entropy of `answer` [n] after the prompt compressed by `plan`, with the
    projector in the graph (the decoder is frozen, so only the projector gets gradients)."""
    generator = compressor.generator
    projected = compressor.projector(plan.features.to(generator.device))  # [C, D]
    prefix = compressor.assemble(input_ids, plan, projected).inputs.inputs_embeds  # [1, P, D]
    answer_embeds = generator.embed_tokens(answer.unsqueeze(0))  # [1, n, D], no grad
    inputs = torch.cat([prefix, answer_embeds], dim=1)
    labels = torch.cat([torch.full((1, prefix.shape[1]), -100), answer.unsqueeze(0)], dim=1)
    return generator.model(inputs_embeds=inputs, labels=labels.to(inputs.device), use_cache=False).loss


def train(args: argparse.Namespace) -> dict:
    from models.refrag import ChunkEncoder, ChunkPlan, ChunkProjector, RefragCompressor

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    answerer = open_answerer(args.library)
    generator = answerer.generator()
    rows = build_prompts(answerer, Path(args.prompts))
    print(f"{len(rows)} prompts, {statistics.mean(len(r['ids']) for r in rows):.1f} prompt tokens and "
          f"{statistics.mean(len(r['answer']) for r in rows):.2f} answer tokens on average", flush=True)  # fmt: skip
    for param in generator.model.parameters():
        param.requires_grad_(False)
    projector = ChunkProjector.load(Path(args.init)).train()
    init_settings = projector.settings
    compressor = RefragCompressor(generator, projector, ChunkEncoder.for_projector(projector))
    opt = torch.optim.AdamW(projector.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    rng = random.Random(args.seed)
    plans: dict[tuple[int, int, float], ChunkPlan] = {}  # the encoder is frozen: plan once

    def plan_of(qi: int, k: int, p: float):  # noqa: ANN202
        if (qi, k, p) not in plans:
            row = rows[qi]
            plans[qi, k, p] = compressor.plan(
                torch.tensor([row["ids"]]), [tuple(s) for s in row["segments"]], k=k,
                expand_fraction=p, question=row["question"],
            )  # fmt: skip
        return plans[qi, k, p]

    log: list[list] = []
    t0 = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for position, qi in enumerate(order):
            row = rows[qi]
            k, p = rng.choice(args.k), rng.choice(args.p)
            ids = torch.tensor([row["ids"]])
            plan = plan_of(qi, k, p)
            if plan.features is None or len(plan.expanded) == len(plan.spans):
                continue
            answer = torch.tensor(row["answer"])
            loss = own = answer_loss(compressor, plan, ids, answer)
            foreign = None
            if args.contrast:
                # The same prompt with the next question's chunk vectors in place of its own: the
                # answer must be likelier with its own evidence (a logistic preference), so that a
                # vector that only says "an answer follows" does not lower the loss.
                other = plan_of(order[(position + 1) % len(order)], k, 0.0).features
                foreign = answer_loss(compressor, with_foreign_features(plan, other), ids, answer)
                loss = own + args.contrast * torch.nn.functional.softplus(own - foreign)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
            opt.step()
            log.append([step, epoch, k, p, round(own.item(), 4)] + ([round(foreign.item(), 4)] if foreign is not None else []))
            recent = [r[4] for r in log[-20:]]
            versus = f" foreign {foreign.item():.4f}" if foreign is not None else ""
            print(f"qa {step} (epoch {epoch}): k={k} p={p} loss {own.item():.4f}{versus} "
                  f"(mean of last {len(recent)}: {sum(recent) / len(recent):.4f}; {time.perf_counter() - t0:.0f} s)",
                  flush=True)  # fmt: skip
            step += 1
        epoch_rows = [r for r in log if r[1] == epoch]
        if not epoch_rows:
            continue
        margin = (
            f", foreign minus own {statistics.mean(r[5] - r[4] for r in epoch_rows):.4f}"
            if args.contrast else ""
        )  # fmt: skip
        print(f"epoch {epoch}: mean answer loss {statistics.mean(r[4] for r in epoch_rows):.4f}{margin}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "command": command_line("pipeline.research.refrag_qa", args, skip={"out", "library", "prompts"}),
        "init": init_settings,
        "data": f"{len(rows)} MMLongBench dev questions of the train documents, pipeline.research.common.split_of",
        "seconds": round(time.perf_counter() - t0),
        "log_qa": log,
    }
    projector.eval().save(out, **settings)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {digest}) in {settings['seconds']} s")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True, help="a library holding the dev documents")
    parser.add_argument("--init", required=True, help="the projector to start from (pipeline.research.refrag_train)")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--prompts", default="folio-library/refrag-qa-prompts.pt", help="cache of the train prompts"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--p", type=float, nargs="+", default=[0.0, 0.25])
    parser.add_argument(
        "--contrast", type=float, default=0.0, metavar="W",
        help="add W * softplus(loss - loss with another question's vectors) (0: off)",
    )  # fmt: skip
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    train(parser.parse_args())


if __name__ == "__main__":
    main()
