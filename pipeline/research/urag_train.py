"""Train URaG's MaxSim projection on cached layer-L hidden states (MMLongBench dev, train
documents).

Inputs come from `python -m pipeline.research.urag cache` (states of every prompt token after
layer L, the evidence segments and their pages). Labels: a segment is positive when its page is
one of the question's evidence pages; the other segments of the same prompt (same document,
retrieved and sampled for this question: hard negatives) are negatives. Loss: contrastive, the
log of the softmax mass of the positives among all segments of the prompt (MaxSim scores /
temperature). Only the train documents (`pipeline.research.common.split_of`) are used; the
validation documents are scored at the end, never used to pick anything. `--cv FOLDS` chooses
the temperature and the number of epochs by cross-validation grouped by document inside the
train documents. `--extra DIR` adds the prompts `pipeline.research.urag_extra` cached (IR
queries, inverse cloze) to training only. `--learning-curve N...` trains on N of the train
questions (seeded draws) and reports validation recall for each N: how much more dev-like
questions would buy.

    nice -n 10 .venv/bin/python -m pipeline.research.urag_train --out bench-work/urag --layer 4 \\
        --cv 4 --threads 1 --save models/weights/urag_maxsim_qwen2.5-coder-0.5b.pt
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from models.urag import MaxSimProjection
from pipeline.research.urag import cached_records, page_recall, segment_tokens, top_segments

SETTINGS = {"dim": 128, "epochs": 40, "lr": 2e-3, "weight_decay": 1e-4, "temperature": 0.05,
            "seed": 0, "keep": 3}  # fmt: skip
# The grid `--cv` searches (the rest of SETTINGS stays fixed).
CV_TEMPERATURES = (0.05, 0.1, 0.2)
CV_EPOCHS = (3, 8, 15)


def _load(out: Path, layer: int, *splits: str) -> list[dict]:
    rows = []
    for r in cached_records(out):
        if r["split"] not in splits or not r["gold_pages"] or r["answer_format"] == "None":
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
            page_recall(set(r["gold_pages"]), r["pages"],
                    top_segments(_scores(projection, r).tolist(), segment_tokens(r), keep))
            for r in rows
        )  # fmt: skip


def train_projection(
    rows: list[dict],
    s: dict,
    layer: int,
    log: bool = False,
    start: MaxSimProjection | None = None,
) -> MaxSimProjection:
    """Train a projection on `rows` (each with a positive and a negative segment) with settings
    `s`, from scratch or on from `start`'s weights (with a fresh optimiser)."""
    torch.manual_seed(s["seed"])
    rng = random.Random(s["seed"])
    rows = list(rows)
    projection = (
        start.train() if start else MaxSimProjection(rows[0]["q"].shape[1], s["dim"], layer)
    )
    optim = torch.optim.AdamW(projection.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    for epoch in range(s["epochs"]):
        rng.shuffle(rows)
        losses = []
        for row in rows:
            logits = _scores(projection, row) / s["temperature"]
            loss = torch.logsumexp(logits, 0) - torch.logsumexp(logits[row["labels"]], 0)
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
        if log and (epoch % 5 == 4 or epoch == s["epochs"] - 1):
            print(f"epoch {epoch + 1}: loss {statistics.fmean(losses):.3f}", flush=True)
    return projection.eval()


def cross_validate(
    train: list[dict],
    grid: list[dict],
    folds: int,
    layer: int,
    keep: int,
    extra: Sequence[dict] = (),
) -> list[dict]:
    """Recall@keep of each setting in `grid` on held-out train documents (folds grouped by
    document, so a document's questions never sit on both sides); `extra` rows (other
    sources) are added to every fold's training side, never held out."""
    docs = sorted({r["doc"] for r in train})
    fold_of = {d: i % folds for i, d in enumerate(docs)}
    results = []
    for settings in grid:
        recalls = []
        for fold in range(folds):
            fit = [r for r in train if fold_of[r["doc"]] != fold and _usable(r)] + list(extra)
            held = [r for r in train if fold_of[r["doc"]] == fold]
            projection = train_projection(fit, settings, layer)
            recalls += [_recall_of(projection, [r], keep) for r in held]
        results.append({**settings, f"cv_recall_keep{keep}": round(statistics.fmean(recalls), 4)})
        print(json.dumps(results[-1]), flush=True)
    return results


def learning_curve(
    usable: list[dict], val: list[dict], sizes: Sequence[int], draws: int, s: dict, layer: int
) -> list[dict]:
    """Validation recall against the number of training questions: for each size, `draws`
    seeded draws of that many usable train questions, each trained with settings `s`. How
    much would more dev-like questions buy (the dev split holds no more of them)?"""
    results = []
    for size in sizes:
        size = min(size, len(usable))
        recalls: dict[int, list[float]] = {k: [] for k in (2, 3, 4, 5)}
        for draw in range(draws if size < len(usable) else 1):  # all of them: one draw is all
            subset = random.Random(1000 + draw).sample(usable, size)
            projection = train_projection(subset, s, layer)
            for k in recalls:
                recalls[k].append(_recall_of(projection, val, k))
        row = {"train_questions": size, "draws": len(recalls[3])}
        for k, values in recalls.items():
            row[f"val_keep{k}"] = round(statistics.fmean(values), 4)
            row[f"val_keep{k}_spread"] = [round(min(values), 4), round(max(values), 4)]
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def _usable(row: dict) -> bool:
    return bool(row["labels"].any()) and not bool(row["labels"].all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the pipeline.research.urag cache folder")
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--save", help="write the trained projection here")
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument(
        "--cv", type=int, default=0, metavar="FOLDS",
        help="choose temperature and epochs by grouped cross-validation on the train documents",
    )  # fmt: skip
    parser.add_argument(
        "--cv-dims", type=int, nargs="*", default=[],
        help="with --cv, also search the projection's output size (default: dim 128 only)",
    )  # fmt: skip
    parser.add_argument(
        "--cv-temperatures", type=float, nargs="*", default=list(CV_TEMPERATURES),
        help="with --cv, the temperatures searched",
    )  # fmt: skip
    parser.add_argument(
        "--cv-epochs", type=int, nargs="*", default=list(CV_EPOCHS),
        help="with --cv, the epoch counts searched",
    )  # fmt: skip
    parser.add_argument(
        "--extra", nargs="*", default=[], metavar="DIR",
        help="more training prompts (`pipeline.research.urag_extra` folders), for training only",
    )  # fmt: skip
    parser.add_argument(
        "--extra-limit", type=int, default=0, metavar="N",
        help="use N of the --extra prompts (a seeded draw), to weigh them against the dev ones",
    )  # fmt: skip
    parser.add_argument(
        "--pretrain-epochs", type=int, default=0, metavar="N",
        help="train on the --extra prompts alone for N epochs first, then on the dev ones only",
    )  # fmt: skip
    parser.add_argument(
        "--no-dev-training", action="store_true",
        help="train on the --extra prompts alone (how far they transfer to the dev documents)",
    )  # fmt: skip
    parser.add_argument(
        "--learning-curve", type=int, nargs="*", default=[], metavar="N",
        help="validation recall when trained on N of the usable train questions (seeded draws)",
    )  # fmt: skip
    parser.add_argument("--draws", type=int, default=3, help="with --learning-curve, draws per N")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    s = {**SETTINGS, "epochs": args.epochs}
    out = Path(args.out)
    stamp = out / "model.json"  # the model the states came from, stamped into saved weights
    if args.save and not stamp.is_file():
        raise SystemExit(
            f"no {stamp}: run `python -m pipeline.research.urag cache` (it writes it) first"
        )
    train, val = _load(out, args.layer, "train"), _load(out, args.layer, "val")
    usable = [r for r in train if _usable(r)]
    extra = []
    for folder in map(Path, args.extra):
        if (folder / "model.json").read_text() != (out / "model.json").read_text():
            raise SystemExit(f"{folder} holds states of another model than {out}")
        extra += [r for r in _load(folder, args.layer, "ir", "ict") if _usable(r)]
    if args.extra_limit:
        extra = random.Random(SETTINGS["seed"]).sample(extra, min(args.extra_limit, len(extra)))
    print(
        f"train {len(train)} questions ({len(usable)} with a positive and a negative), "
        f"extra {len(extra)}, val {len(val)}"
    )
    if args.learning_curve:
        if args.cv or extra or args.save:
            raise SystemExit(
                "--learning-curve trains with the settings as given: no --cv, --extra or --save"
            )
        curve = learning_curve(usable, val, args.learning_curve, args.draws, s, args.layer)
        (out / f"learning-curve-L{args.layer}.json").write_text(json.dumps(curve, indent=1) + "\n")
        return
    if args.no_dev_training:
        if args.cv or not extra:
            raise SystemExit("--no-dev-training needs --extra prompts and no --cv")
        usable = []
    cv = None
    if args.cv:
        grid = [{**s, "temperature": t, "epochs": e, "dim": d}
                for d in args.cv_dims or [s["dim"]] for t in args.cv_temperatures
                for e in args.cv_epochs]  # fmt: skip
        cv = cross_validate(train, grid, args.cv, args.layer, s["keep"], extra)
        s = {k: v for k, v in max(cv, key=lambda r: r[f"cv_recall_keep{s['keep']}"]).items()
             if k in SETTINGS}  # fmt: skip
        print("chosen:", json.dumps(s), flush=True)
    if args.pretrain_epochs:
        if args.cv or not extra:
            raise SystemExit("--pretrain-epochs needs --extra prompts and no --cv")
        first = train_projection(extra, {**s, "epochs": args.pretrain_epochs}, args.layer)
        projection = train_projection(usable, s, args.layer, log=True, start=first)
    else:
        projection = train_projection(usable + extra, s, args.layer, log=True)
    report = {
        "layer": args.layer,
        "settings": s,
        "cross_validation": cv,
        "train_questions": len(train),
        "train_used": len(usable),
        "extra_used": len(extra),
        "extra": args.extra,
        "val_questions": len(val),
        "recall": {
            split: {f"keep{k}": round(_recall_of(projection, rows, k), 4) for k in (2, 3, 4, 5)}
            for split, rows in (("train", train), ("val", val))
        },
    }
    print(json.dumps(report, indent=1))
    name = (
        f"train-L{args.layer}"
        + (f"-extra{len(extra)}" if extra else "")
        + ("-only" if args.no_dev_training else "")
        + (f"-pre{args.pretrain_epochs}" if args.pretrain_epochs else "")
    )
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.save:
        projection.model = json.loads(stamp.read_text())
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        data = (
            "MMLongBench dev, train documents (pipeline.research.common.split_of), the questions "
            "pipeline.research.urag cache stored (train_questions of them usable)"
        )
        if extra:
            folders = ", ".join(Path(d).name for d in args.extra)
            data += f"; plus {len(extra)} prompts from pipeline.research.urag_extra ({folders})"
        projection.save(Path(args.save), **s, train_questions=len(usable),
                        extra_prompts=len(extra), data=data)  # fmt: skip


if __name__ == "__main__":
    main()
