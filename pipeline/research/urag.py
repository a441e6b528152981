"""URaG on the MMLongBench dev split: layer-L scores, recall against L, prefill time and accuracy.

Run by hand (never in tests), under `nice`, one step at a time:

    export HF_HUB_OFFLINE=1 FOLIO_MODEL_CACHE=folio-library/models
    # 1. evidence (retrieval + WuKong sampler) and layer 0..MAX states of every question
    nice -n 15 .venv/bin/python -m pipeline.research.urag cache --library LIB --out DIR --stride 1 --max-layer 4 --save-layers 4
    # 2. recall of the kept pages against L (attention mass; MaxSim with a trained projection)
    .venv/bin/python -m pipeline.research.urag curve --out DIR [--projection models/weights/....pt]
    # 2a. the sampler's own score of every segment (for the fused scorer: MaxSim + prior)
    nice -n 15 .venv/bin/python -m pipeline.research.urag priors --library LIB --out DIR
    .venv/bin/python -m pipeline.research.urag curve --out DIR --projection P --prior-weights 0 0.5 1 2
    # 2b. the sampler alone under smaller budgets (the baseline the kept set must beat)
    nice -n 15 .venv/bin/python -m pipeline.research.urag budget --library LIB --out DIR --shares 0.4 0.5 0.6 1
    # 2c. more training prompts for the projection: `pipeline.research.urag_extra`
    #     (BENCHMARKS: no gain)
    # 3. answers with and without the stage on the validation documents
    nice -n 15 .venv/bin/python -m pipeline.research.urag qa --library LIB --out DIR --stride 4 --limit 32 --layer 4 \\
        --keep 3 --scorer maxsim

The dev split is divided by document (`split_of`): about 30% of the documents are validation,
never used to choose L, the keep count or to train the projection.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pipeline.research.common import SAMPLES, evidence_prompt, open_answerer, split_of


def cache(args: argparse.Namespace) -> None:
    """Step 1: per question, segments with pages, attention mass per layer, saved states."""
    from models.urag import LayerwiseDecoder, attention_mass, layout_prompt, model_fingerprint
    from pipeline.evaluation.qa import load_qa_questions

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "states").mkdir(parents=True, exist_ok=True)
    records_path = out / "records.jsonl"
    done = set()
    if records_path.exists():
        done = {json.loads(line)["index"] for line in records_path.open()}
    questions = load_qa_questions(SAMPLES)
    answerer = open_answerer(args.library)
    cfg = answerer.config.model_copy(update={"question_first": args.question_first})
    generator = answerer.generator()
    decoder = LayerwiseDecoder(generator.model)
    # Which model the states come from: `urag_train --save` stamps it into the projection, and
    # the stage's "auto" scorer uses MaxSim only on that model.
    (out / "model.json").write_text(json.dumps(model_fingerprint(generator.model)) + "\n")
    with records_path.open("a") as sink:
        for index in range(0, len(questions), args.stride):
            if index in done:
                continue
            q = questions[index]
            t0 = time.perf_counter()
            items, prompt = evidence_prompt(answerer, q.question, q.doc_id, cfg)
            if not items:
                continue
            layout = layout_prompt(generator, prompt)
            ids = layout.inputs.input_ids
            positions = torch.arange(ids.shape[1])
            kv = decoder.new_cache()
            hidden = decoder.embed(ids)
            mass: list[list[float]] = []
            t1 = time.perf_counter()
            for layer in range(args.max_layer + 1):
                hidden_in = hidden
                hidden = decoder.run(hidden, positions, kv, range(layer, layer + 1))
                mass.append(
                    [round(float(x), 6) for x in
                     attention_mass(decoder, layer, hidden_in, positions, kv, layout)]
                )  # fmt: skip
                if layer in args.save_layers:
                    torch.save(
                        hidden[0].to(torch.float16).clone(), out / "states" / f"{index}-L{layer}.pt"
                    )
            record = {
                "index": index,
                "doc": q.doc_id,
                "split": split_of(q.doc_id),
                "question": q.question,
                "answer_format": q.answer_format,
                "gold_pages": list(q.evidence_pages),
                "pages": [i.page for i in items],
                "segments": [list(s) for s in layout.segments],
                "question_span": list(layout.question),
                "tokens": layout.num_tokens,
                "question_first": args.question_first,
                "mass": mass,
                "evidence_s": round(t1 - t0, 2),
                "layers_s": round(time.perf_counter() - t1, 2),
            }
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            print(
                index, q.doc_id[:30], len(items), layout.num_tokens, record["layers_s"], flush=True
            )


def priors(args: argparse.Namespace) -> None:
    """Step 2a: the sampler's similarity of every cached segment, to fuse with MaxSim."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out / "priors.jsonl"
    done = {json.loads(line)["index"] for line in path.open()} if path.exists() else set()
    answerer = open_answerer(args.library)
    with path.open("a") as sink:
        for r in cached_records(out):
            if r["index"] in done:
                continue
            items, _ = evidence_prompt(answerer, r["question"], r["doc"], answerer.config)
            pages = [i.page for i in items]
            # The evidence must be the cached one, or the scores would sit on other segments.
            row = {"index": r["index"], "scores": [round(float(i.score), 6) for i in items],
                   "same": pages == r["pages"]}  # fmt: skip
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(r["index"], row["same"], flush=True)


def cached_records(out: Path) -> list[dict]:
    """The question records `cache` wrote to `out`."""
    return [json.loads(line) for line in (out / "records.jsonl").open()]


def page_recall(gold: set[int], pages: list[int], kept: list[int]) -> float:
    """Share of the gold pages among the pages of the kept segments."""
    return len(gold & {pages[i] for i in kept}) / len(gold)


def top_segments(scores: list[float], tokens: list[int], keep: int) -> list[int]:
    """The segments URaG keeps for these scores (`models.urag.select_top`)."""
    from models.config import UragConfig
    from models.urag import select_top

    return select_top(torch.tensor(scores), tokens, UragConfig(keep=keep))


def maxsim_for(record: dict, projection, out: Path) -> list[float]:
    """MaxSim scores of one cached question at the projection's layer."""
    from models.urag import maxsim_scores

    hidden = torch.load(out / "states" / f"{record['index']}-L{projection.layer}.pt").float()

    class _Layout:
        segments = [tuple(s) for s in record["segments"]]
        question = tuple(record["question_span"])

    return maxsim_scores(projection, hidden[None], _Layout()).tolist()


def oracle_scores(record: dict) -> list[float]:
    """Scores of a scorer that knows the gold pages: one item per gold page first (the shortest
    of the page's items), then the other items, shortest first. The ceiling of any scorer."""
    gold, tokens = set(record["gold_pages"]), segment_tokens(record)
    order = sorted(range(len(tokens)), key=lambda i: (record["pages"][i] not in gold, tokens[i]))
    covered: set[int] = set()
    first = []
    for i in order:
        page = record["pages"][i]
        if page in gold and page not in covered:
            covered.add(page)
            first.append(i)
    ranked = first + [i for i in order if i not in first]
    scores = [0.0] * len(tokens)
    for rank, i in enumerate(ranked):
        scores[i] = -float(rank)
    return scores


def _flops_saved(model_config, rows: list[dict], kept: list[list[int]], layer: int) -> float:
    """Mean share of prefill FLOPs saved when the deep layers after `layer` read only `kept`."""
    from models.urag import prefill_flops

    saved = []
    for r, keep in zip(rows, kept, strict=True):
        seg = segment_tokens(r)
        deep = r["tokens"] - (sum(seg) - sum(seg[i] for i in keep))
        full = prefill_flops(model_config, r["tokens"])
        saved.append(1 - prefill_flops(model_config, r["tokens"], deep, layer) / full)
    return round(statistics.fmean(saved), 4)


def curve(args: argparse.Namespace) -> None:
    """Step 2: page recall of the kept set against L, per split, next to the sampler alone."""
    out = Path(args.out)
    model_config = None
    if args.model_config:  # the generator's config.json folder: FLOPs saved at `--at`
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(args.model_config)
    records = [r for r in cached_records(out) if r["gold_pages"] and r["answer_format"] != "None"]
    report: dict = {"questions": {}, "sampler": {}, "attention": {}, "kept_token_share": {}}
    for split in ("train", "val"):
        rows = [r for r in records if r["split"] == split]
        report["questions"][split] = len(rows)
        report["sampler"][split] = round(
            statistics.fmean(page_recall(set(r["gold_pages"]), r["pages"], list(range(len(r["pages"]))))
                             for r in rows), 4)  # fmt: skip
        for keep in args.keep:
            layers = range(min(len(r["mass"]) for r in rows))  # caches may stop at other layers
            report["attention"].setdefault(f"keep{keep}", {})[split] = {
                layer: round(statistics.fmean(
                    page_recall(set(r["gold_pages"]), r["pages"],
                            top_segments(r["mass"][layer], segment_tokens(r), keep)) for r in rows), 4)
                for layer in layers
            }  # fmt: skip
            report["kept_token_share"].setdefault(f"keep{keep}", {})[split] = round(
                statistics.fmean(
                    sum(segment_tokens(r)[i] for i in top_segments(r["mass"][args.at], segment_tokens(r), keep))
                    / sum(segment_tokens(r)) for r in rows), 4)  # fmt: skip
            oracle = [top_segments(oracle_scores(r), segment_tokens(r), keep) for r in rows]
            report.setdefault("oracle", {}).setdefault(f"keep{keep}", {})[split] = {
                "recall": round(statistics.fmean(
                    page_recall(set(r["gold_pages"]), r["pages"], kept) for r, kept in zip(rows, oracle, strict=True)
                ), 4),
                "kept_token_share": round(statistics.fmean(
                    sum(segment_tokens(r)[i] for i in kept) / sum(segment_tokens(r))
                    for r, kept in zip(rows, oracle, strict=True)
                ), 4),
            }  # fmt: skip
            if model_config is not None:
                report["oracle"][f"keep{keep}"][split]["flops_saved"] = _flops_saved(
                    model_config, rows, oracle, args.at
                )
            report.setdefault("random", {}).setdefault(f"keep{keep}", {})[split] = round(
                statistics.fmean(min(keep, len(r["pages"])) / len(r["pages"])
                                 * page_recall(set(r["gold_pages"]), r["pages"], list(range(len(r["pages"]))))
                                 for r in rows), 4)  # fmt: skip
        if args.projection:
            from models.urag import MaxSimProjection

            projection = MaxSimProjection.load(Path(args.projection))
            scores = {r["index"]: maxsim_for(r, projection, out) for r in rows}
            for keep in args.keep:
                kept = {r["index"]: top_segments(scores[r["index"]], segment_tokens(r), keep) for r in rows}
                report.setdefault("maxsim", {}).setdefault(f"keep{keep}", {})[split] = round(
                    statistics.fmean(
                        page_recall(set(r["gold_pages"]), r["pages"], kept[r["index"]]) for r in rows
                    ), 4)  # fmt: skip
                report.setdefault("maxsim_kept_token_share", {}).setdefault(f"keep{keep}", {})[
                    split
                ] = round(statistics.fmean(
                    sum(segment_tokens(r)[i] for i in kept[r["index"]]) / sum(segment_tokens(r))
                    for r in rows), 4)  # fmt: skip
                if model_config is not None:
                    report.setdefault("maxsim_flops_saved", {}).setdefault(f"keep{keep}", {})[
                        split
                    ] = _flops_saved(
                        model_config, rows, [kept[r["index"]] for r in rows], projection.layer
                    )
        if args.projection and args.prior_weights:
            _fused_curve(report, split, rows, scores, _priors(out), args)
    report["segments_mean"] = round(statistics.fmean(len(r["pages"]) for r in records), 2)
    report["prompt_tokens_mean"] = round(statistics.fmean(r["tokens"] for r in records), 1)
    text = json.dumps(report, indent=1)
    (out / "curve.json").write_text(text + "\n")
    print(text)


def _priors(out: Path) -> dict[int, list[float]]:
    path = out / "priors.jsonl"
    if not path.exists():
        raise SystemExit(f"no {path}; run `python -m pipeline.research.urag priors` first")
    rows = [json.loads(line) for line in path.open()]
    return {r["index"]: r["scores"] for r in rows if r["same"]}


def _fuse_scores(scores: torch.Tensor, prior: torch.Tensor, weight: float) -> torch.Tensor:
    """`z(scores) + weight * z(prior)`: the layer-L score plus the sampler's own similarity of
    each segment, both standardised over the prompt's segments (their scales differ: MaxSim
    cosines against MiniLM cosines). `weight` 0 returns the layer-L ranking unchanged."""

    def z(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        spread = x.std(unbiased=False) if x.numel() > 1 else x.new_tensor(0.0)
        return (x - x.mean()) / spread if float(spread) > 0 else torch.zeros_like(x)

    return z(scores) + weight * z(prior)


def _fused_curve(
    report: dict, split: str, rows: list[dict], maxsim: dict[int, list[float]],
    prior: dict[int, list[float]], args: argparse.Namespace,
) -> None:  # fmt: skip
    """Recall and kept-token share of MaxSim fused with the sampler's similarity, per weight
    (0: MaxSim alone; the "prior" entry: the sampler's similarity alone), on the questions whose
    cached evidence the priors step reproduced."""
    rows = [r for r in rows if r["index"] in prior]
    report.setdefault("fused_questions", {})[split] = len(rows)
    for keep in args.keep:
        for name in [*map(str, args.prior_weights), "prior"]:
            kept = {}
            for r in rows:
                s, p = torch.tensor(maxsim[r["index"]]), torch.tensor(prior[r["index"]])
                fused = p if name == "prior" else _fuse_scores(s, p, float(name))
                kept[r["index"]] = top_segments(fused.tolist(), segment_tokens(r), keep)
            entry = report.setdefault("fused", {}).setdefault(name, {})
            entry = entry.setdefault(f"keep{keep}", {})
            entry[split] = {
                "recall": round(statistics.fmean(
                    page_recall(set(r["gold_pages"]), r["pages"], kept[r["index"]]) for r in rows), 4),
                "token_share": round(statistics.fmean(
                    sum(segment_tokens(r)[i] for i in kept[r["index"]]) / sum(segment_tokens(r))
                    for r in rows), 4),
            }  # fmt: skip


def budget(args: argparse.Namespace) -> None:
    """Step 2b: the baseline URaG must beat: the sampler alone under a smaller token budget
    (share of the default), evidence-page recall and prompt evidence tokens per split."""
    from models.urag import layout_prompt

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    records = [r for r in cached_records(out) if r["gold_pages"] and r["answer_format"] != "None"]
    answerer = open_answerer(args.library)
    generator = answerer.generator()
    report: dict = {"questions": {}, "budgets": {}}
    for share in args.shares:
        cfg = answerer.config.model_copy(
            update={"token_budget": round(answerer.config.token_budget * share)}
        )
        rows = []
        for r in records:
            items, prompt = evidence_prompt(answerer, r["question"], r["doc"], cfg)
            layout = layout_prompt(generator, prompt) if items else None
            tokens = sum(e - s for s, e in layout.segments) if layout else 0
            full = sum(segment_tokens(r))
            pages = [i.page for i in items]
            rows.append((r["split"], page_recall(set(r["gold_pages"]), pages, list(range(len(pages)))),
                         tokens / full if full else 0.0))  # fmt: skip
        report["budgets"][str(share)] = {
            split: {
                "page_recall": round(statistics.fmean(x[1] for x in rows if x[0] == split), 4),
                "evidence_token_share": round(
                    statistics.fmean(x[2] for x in rows if x[0] == split), 4
                ),
            }
            for split in ("train", "val")
        }
        print(share, json.dumps(report["budgets"][str(share)]), flush=True)
    for split in ("train", "val"):
        report["questions"][split] = sum(r["split"] == split for r in records)
    (out / "budget.json").write_text(json.dumps(report, indent=1) + "\n")


def segment_tokens(record: dict) -> list[int]:
    """Tokens of each evidence segment of a cached prompt."""
    return [e - s for s, e in record["segments"]]


def qa(args: argparse.Namespace) -> None:
    """Step 3: the same validation questions answered with the stage off and on (one process,
    alternating per question so that machine load hits both alike)."""
    from models.config import UragConfig
    from models.urag import prefill_flops
    from pipeline.evaluation.qa import load_qa_questions
    from pipeline.evaluation.scoring import score_answer

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    # A question-first run gets its own file: the two prompts are different experiments.
    qf = "-qf" if args.question_first else ""
    path = out / f"qa-{args.scorer}-L{args.layer}-k{args.keep}{qf}.jsonl"
    if args.summary_only:  # the summary again from the rows an earlier run wrote
        summary = _qa_summary([json.loads(line) for line in path.open()])
        (out / path.name.replace(".jsonl", ".json")).write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary, indent=1))
        return
    questions = [
        (i, q) for i, q in enumerate(load_qa_questions(SAMPLES)) if split_of(q.doc_id) == "val"
    ][:: args.stride][: args.limit]
    answerer = open_answerer(args.library)
    base = answerer.config.model_copy(update={"question_first": args.question_first})
    on = base.model_copy(
        update={
            "use_urag": True,
            "urag": UragConfig(
                layer=args.layer, keep=args.keep, scorer=args.scorer, projection=args.projection
            ),
        }
    )
    warm = answerer.ask("What is this document about?", doc_ids=[questions[0][1].doc_id])
    del warm
    model_config = answerer.generator().model.config
    model_config = getattr(model_config, "text_config", model_config)
    rows = []
    with path.open("w") as sink:
        for index, q in questions:
            row = {"index": index, "doc": q.doc_id, "format": q.answer_format, "gold": q.answer,
                   "gold_pages": list(q.evidence_pages)}  # fmt: skip
            # Retrieval alone: the pages of the k chunks the sampler starts from.
            hits = answerer.index.search(q.question, k=base.k, doc_ids=[q.doc_id])
            row["retrieved_pages"] = sorted({h.page for h in hits})
            for name, cfg in (("off", base), ("on", on)):
                answer = answerer.ask(q.question, doc_ids=[q.doc_id], config=cfg)
                stats = answer.stats
                pages = sorted({e.page for e in answer.evidence})
                kept_pages = list(stats.urag_pages) if name == "on" else pages
                row[name] = {
                    "prediction": answer.plain,
                    "score": score_answer(answer.plain, q.answer, q.answer_format),
                    "prefill_ms": round(stats.prefill_ms, 1),
                    "ttft_ms": round(stats.ttft_ms, 1),
                    "prompt_tokens": stats.prompt_tokens,
                    "pages": kept_pages,
                    "urag": None if name == "off" else list(stats.urag_kept),
                    "deep_tokens": stats.prompt_tokens
                    - (
                        stats.stage("urag").total_tokens - stats.stage("urag").kept_tokens
                        if name == "on" and stats.stage("urag")
                        else 0
                    ),  # fmt: skip
                }
                row[name]["gflops"] = round(
                    prefill_flops(
                        model_config, stats.prompt_tokens, row[name]["deep_tokens"], args.layer
                    ) / 1e9,
                    2,
                )  # fmt: skip
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(index, row["off"]["score"], row["on"]["score"], row["off"]["prefill_ms"],
                  row["on"]["prefill_ms"], flush=True)  # fmt: skip
    summary = _qa_summary(rows)
    (out / path.name.replace(".jsonl", ".json")).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


def _qa_summary(rows: list[dict]) -> dict:
    gold_rows = [r for r in rows if r["gold_pages"] and r["format"] != "None"]
    summary = {"questions": len(rows)}
    for name in ("off", "on"):
        summary[name] = {
            "accuracy": round(statistics.fmean(r[name]["score"] for r in rows), 4),
            "prefill_ms_sum": round(sum(r[name]["prefill_ms"] for r in rows), 1),
            "prefill_ms_p50": round(statistics.median(r[name]["prefill_ms"] for r in rows), 1),
            "page_recall": round(
                statistics.fmean(
                    len(set(r["gold_pages"]) & set(r[name]["pages"])) / len(set(r["gold_pages"]))
                    for r in gold_rows
                ),
                4,
            )
            if gold_rows
            else None,  # fmt: skip
        }
    summary["prefill_saved"] = round(
        1 - summary["on"]["prefill_ms_sum"] / summary["off"]["prefill_ms_sum"], 4
    )
    saved = [1 - r["on"]["prefill_ms"] / r["off"]["prefill_ms"] for r in rows]
    summary["prefill_saved_per_question"] = {
        "min": round(min(saved), 4), "median": round(statistics.median(saved), 4),
        "max": round(max(saved), 4),
    }  # fmt: skip
    summary["identical_predictions"] = sum(r["off"]["prediction"] == r["on"]["prediction"] for r in rows)
    summary["changed_scores"] = sum(r["off"]["score"] != r["on"]["score"] for r in rows)
    summary["deep_token_share"] = round(
        statistics.fmean(r["on"]["deep_tokens"] / r["on"]["prompt_tokens"] for r in rows), 4
    )
    if all("gflops" in r["off"] for r in rows):
        off, on = (sum(r[name]["gflops"] for r in rows) for name in ("off", "on"))
        summary["prefill_gflops"] = {"off": round(off, 1), "on": round(on, 1)}
        summary["flops_saved"] = round(1 - on / off, 4)
    if gold_rows and all("retrieved_pages" in r for r in gold_rows):
        summary["retrieval_page_recall"] = round(
            statistics.fmean(
                len(set(r["gold_pages"]) & set(r["retrieved_pages"])) / len(set(r["gold_pages"]))
                for r in gold_rows
            ),
            4,
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("cache")
    p.add_argument("--library", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--max-layer", type=int, default=10)
    p.add_argument("--save-layers", type=int, nargs="*", default=[4, 6, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--question-first", action="store_true",
                   help="state the question before the evidence too (AnswerConfig.question_first)")  # fmt: skip
    p = sub.add_parser("curve")
    p.add_argument("--out", required=True)
    p.add_argument("--keep", type=int, nargs="*", default=[2, 3, 4, 5])
    p.add_argument("--at", type=int, default=4, help="layer whose kept-token share is reported")
    p.add_argument("--projection")
    p.add_argument("--model-config", help="the generator's folder (config.json): FLOPs saved")
    p.add_argument("--prior-weights", type=float, nargs="*", default=[],
                   help="also fuse MaxSim with the sampler's similarity at these weights")  # fmt: skip
    p = sub.add_parser("priors")
    p.add_argument("--library", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("budget")
    p.add_argument("--library", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--shares", type=float, nargs="+", default=[0.4, 0.5, 0.6, 1.0])
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("qa")
    p.add_argument("--library", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--layer", type=int, default=4)
    p.add_argument("--keep", type=int, default=4)
    p.add_argument("--scorer", default="attention")
    p.add_argument("--projection")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--question-first", action="store_true",
                   help="both arms state the question before the evidence too")  # fmt: skip
    p.add_argument("--summary-only", action="store_true",
                   help="summarise the rows an earlier run with these settings wrote")  # fmt: skip
    args = parser.parse_args()
    {"cache": cache, "curve": curve, "priors": priors, "budget": budget, "qa": qa}[args.step](args)


if __name__ == "__main__":
    main()
