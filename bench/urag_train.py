"""Train URaG's MaxSim projection on cached layer-L hidden states (MMLongBench dev, train documents).

Inputs come from `python -m bench.urag cache` (states of every prompt token after layer L, the
evidence segments and their pages). Labels: a segment is positive when its page is one of the
question's evidence pages; the other segments of the same prompt (same document, retrieved and
sampled for this question: hard negatives) are negatives. Loss: contrastive, the log of the
softmax mass of the positives among all segments of the prompt (MaxSim scores / temperature).
Only the train documents (`bench.urag.split_of`) are used; the validation documents are scored
at the end, never used to pick anything.

    nice -n 15 .venv/bin/python -m bench.urag_train --out bench-work/urag --layer 6 \\
        --save models/weights/urag_maxsim_qwen2.5-coder-0.5b.pt
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

from bench.urag import _recall, _records, _seg_tokens, _top
from models.urag import MaxSimProjection

SETTINGS = {"dim": 128, "epochs": 40, "lr": 2e-3, "weight_decay": 1e-4, "temperature": 0.05,
            "seed": 0, "keep": 4}  # fmt: skip


def _load(out: Path, layer: int, split: str) -> list[dict]:
    rows = []
    for r in _records(out):
        if r["split"] != split or not r["gold_pages"] or r["answer_format"] == "None":
            continue
        path = out / "states" / f"{r['index']}-L{layer}.pt"
        if not path.exists():
            continue
        hidden = torch.load(path).float()
        gold = set(r["gold_pages"])
        labels = torch.tensor([p in gold for p in r["pages"]])
        qs, qe = r["question_span"]
        rows.append({**r, "q": hidden[qs:qe], "segs": [hidden[s:e] for s, e in r["segments"]],
                     "labels": labels})  # fmt: skip
    return rows


def _scores(projection: MaxSimProjection, row: dict) -> torch.Tensor:
    q = projection(row["q"])  # [Tq, d]
    return torch.stack([(q @ projection(s).T).max(dim=1).values.mean() for s in row["segs"]])


def _recall_of(projection: MaxSimProjection, rows: list[dict], keep: int) -> float:
    with torch.no_grad():
        return statistics.fmean(
            _recall(set(r["gold_pages"]), r["pages"],
                    _top(_scores(projection, r).tolist(), _seg_tokens(r), keep))
            for r in rows
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the bench.urag cache folder")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--save", help="write the trained projection here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    s = SETTINGS
    torch.manual_seed(s["seed"])
    random.seed(s["seed"])
    out = Path(args.out)
    train, val = _load(out, args.layer, "train"), _load(out, args.layer, "val")
    usable = [r for r in train if r["labels"].any() and not r["labels"].all()]
    print(
        f"train {len(train)} questions ({len(usable)} with a positive and a negative), val {len(val)}"
    )
    hidden_size = usable[0]["q"].shape[1]
    projection = MaxSimProjection(hidden_size, s["dim"], args.layer)
    optim = torch.optim.AdamW(projection.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    for epoch in range(s["epochs"]):
        random.shuffle(usable)
        losses = []
        for row in usable:
            logits = _scores(projection, row) / s["temperature"]
            loss = torch.logsumexp(logits, 0) - torch.logsumexp(logits[row["labels"]], 0)
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
        if epoch % 10 == 9 or epoch == s["epochs"] - 1:
            print(f"epoch {epoch + 1}: loss {statistics.fmean(losses):.3f}, "
                  f"train recall@keep{s['keep']} {_recall_of(projection, train, s['keep']):.3f}")  # fmt: skip
    projection.eval()
    report = {
        "layer": args.layer,
        "settings": s,
        "train_questions": len(train),
        "train_used": len(usable),
        "val_questions": len(val),
        "recall": {
            split: {f"keep{k}": round(_recall_of(projection, rows, k), 4) for k in (2, 3, 4, 5)}
            for split, rows in (("train", train), ("val", val))
        },
    }
    print(json.dumps(report, indent=1))
    (out / f"train-L{args.layer}.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        projection.save(Path(args.save), **s, train_questions=len(usable),
                        data="MMLongBench dev, train documents (bench.urag.split_of), stride 4")  # fmt: skip


if __name__ == "__main__":
    main()
