"""More training prompts for URaG's MaxSim projection than the 101 MMLongBench dev questions.

The projection shipped for issue 7 was trained on 101 dev questions, and the measurements said its
recall may be limited by that number. Two sources of more prompts, each cached in the layout
`pipeline.research.urag cache` writes (records.jsonl, states/INDEX-LL.pt) with its own split
name, for `pipeline.research.urag_train --extra DIR`, which adds them to training only (MMLongBench's validation
documents stay the only place recall is reported):

- `ir` (split "ir"): the 476 judged queries of the five collections in `../shared/data/ir`. Each
  prompt holds the passages the hybrid retriever ranks highest for the query, at most two of them
  judged relevant (the positives), the others retrieved for the same query (hard negatives).
- `ict` (split "ict"): the inverse cloze task (Lee et al., 2019) on the dev **train** documents.
  The pseudo-question is a sentence of a page; the evidence is what the shipped pipeline
  (retrieval, then the sampler) finds for it in its document, with that sentence cut out of
  the evidence, so the source page is a positive by its context, not by the same words.

Both prompts are built the way the answering prompt is: the same instructions, evidence quoted
as data and numbered, the question last.

    export HF_HUB_OFFLINE=1 FOLIO_MODEL_CACHE=folio-library/models
    nice -n 10 .venv/bin/python -m pipeline.research.urag_extra ir --out DIR_IR --layer 4
    nice -n 10 .venv/bin/python -m pipeline.research.urag_extra ict --library LIB --out DIR_ICT --layer 4
    nice -n 10 .venv/bin/python -m pipeline.research.urag_train --out DIR --extra DIR_IR DIR_ICT --layer 4
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.research.common import IR, SAMPLES, open_answerer, split_of

COLLECTIONS = ("cranfield", "cisi", "medline", "cacm", "npl")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def select_passages(
    ranked: list[str],
    relevant: set[str],
    lengths: dict[str, int],
    budget: int,
    max_items: int,
    max_positives: int,
) -> list[str] | None:
    """The passages a prompt holds: the top of the ranking in order, at most `max_positives`
    relevant ones (the dev prompts hold one or two evidence items among eleven; a prompt that
    is mostly positives teaches little), until the token budget or the item count is reached.
    None when they are all relevant or all not (nothing to learn)."""
    chosen, used, positives = [], 0, 0
    for doc_id in ranked:
        if len(chosen) == max_items or used + lengths[doc_id] > budget:
            break
        if doc_id in relevant:
            if positives == max_positives:
                continue
            positives += 1
        chosen.append(doc_id)
        used += lengths[doc_id]
    labels = {d in relevant for d in chosen}
    return chosen if labels == {True, False} else None


def cloze_sentences(text: str, min_words: int = 8, max_words: int = 40) -> list[str]:
    """Sentences of a paragraph fit to stand as a pseudo-question: mostly words, of a question's
    length, from a paragraph with at least one other sentence (what is left must carry it)."""
    sentences = [s.strip() for s in _SENTENCE_END.split(" ".join(text.split()))]
    if len(sentences) < 2:
        return []
    fit = []
    for s in sentences:
        words = s.split()
        alphabetic = sum(w.strip(".,;:()").isalpha() for w in words)
        if min_words <= len(words) <= max_words and alphabetic >= 0.7 * len(words):
            fit.append(s)
    return fit


class _Sink:
    """Runs layers 0..L over a prompt, saves the layer-L states and appends the record."""

    def __init__(self, out: Path, generator: Any, layer: int) -> None:
        from models.urag import LayerwiseDecoder, model_fingerprint

        self.out, self.generator, self.layer = out, generator, layer
        (out / "states").mkdir(parents=True, exist_ok=True)
        self.path = out / "records.jsonl"
        self.done = set()
        if self.path.exists():
            self.done = {json.loads(line)["index"] for line in self.path.open()}
        self.decoder = LayerwiseDecoder(generator.model)
        (out / "model.json").write_text(json.dumps(model_fingerprint(generator.model)) + "\n")

    def store(self, prompt: Any, record: dict, started: float) -> None:
        from models.urag import layout_prompt

        layout = layout_prompt(self.generator, prompt)
        ids = layout.inputs.input_ids
        t1 = time.perf_counter()
        dec = self.decoder
        hidden = dec.run(
            dec.embed(ids), torch.arange(ids.shape[1]), dec.new_cache(), range(self.layer + 1)
        )
        state = self.out / "states" / f"{record['index']}-L{self.layer}.pt"
        torch.save(hidden[0].to(torch.float16).clone(), state)
        record = {
            **record,
            "answer_format": "Str",
            "segments": [list(s) for s in layout.segments],
            "question_span": list(layout.question),
            "tokens": layout.num_tokens,
            "evidence_s": round(t1 - started, 2),
            "layers_s": round(time.perf_counter() - t1, 2),
        }
        with self.path.open("a") as sink:  # one line per prompt: a killed run resumes
            sink.write(json.dumps(record) + "\n")
        print(record["index"], len(record["pages"]), len(record["gold_pages"]), layout.num_tokens,
              record["layers_s"], flush=True)  # fmt: skip


def _truncate(tokenizer, text: str, max_tokens: int) -> tuple[str, int]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= max_tokens:
        return text, len(ids)
    return tokenizer.decode(ids[:max_tokens]).strip(), max_tokens


def ir(args: argparse.Namespace) -> None:
    """Prompts from the judged queries of the IR collections."""
    from models.config import GeneratorConfig
    from models.generator import EVIDENCE_IS_DATA, Evidence, build_prompt, defuse, load_generator
    from pipeline.answering.prompt import CITE_INSTRUCTION
    from pipeline.evaluation.retrieval import build_retriever
    from pipeline.library.encoders import make_encoders
    from retrieval import RetrievalConfig, RetrievalMode, load_beir

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    model_cache = Path(os.environ.get("FOLIO_MODEL_CACHE", "folio-library/models"))
    generator = load_generator(GeneratorConfig(), cache_dir=model_cache)
    sink = _Sink(out, generator, args.layer)
    instructions = f"{CITE_INSTRUCTION} {EVIDENCE_IS_DATA}"
    config = RetrievalConfig()
    mode = RetrievalMode.HYBRID
    dense, sparse = make_encoders([mode], config)
    for name in args.collections:
        collection = load_beir(IR / name)
        corpus_key = hashlib.sha256((IR / name / "corpus.jsonl").read_bytes()).hexdigest()
        retriever = build_retriever(
            collection, dense_encoder=dense, sparse_encoder=sparse, retrieval_config=config,
            cache_dir=out / "index", corpus_key=corpus_key,
        )  # fmt: skip
        queries = list(collection.judged_queries().items())
        random.Random(f"{name}-order").shuffle(queries)
        for qid, question in queries[: args.per_collection]:
            index = f"{name}-{qid}"
            if index in sink.done:
                continue
            t0 = time.perf_counter()
            relevant = {d for d, g in collection.qrels[qid].items() if g > 0}
            ranked = [hit.chunk_id for hit in retriever.search(question, args.depth, mode=mode)]
            texts, lengths = {}, {}
            for doc_id in ranked:
                texts[doc_id], lengths[doc_id] = _truncate(
                    generator.tokenizer, collection.corpus[doc_id], args.passage_tokens
                )
            chosen = select_passages(
                ranked, relevant, lengths, args.budget, args.max_items, args.max_positives
            )
            if chosen is None:
                continue
            # Shuffle: the retriever's order would put the positives first, and layers 0-2
            # favour position; the sampler's prompts are in page order, not by relevance.
            random.Random(index).shuffle(chosen)
            evidence = [
                Evidence(text=f"(page {n}) " + defuse(texts[d], generator.control_tokens))
                for n, d in enumerate(chosen, start=1)
            ]
            prompt = build_prompt(
                defuse(question, generator.control_tokens, role_lines=False), evidence,
                instructions=instructions,
            )  # fmt: skip
            # Items stand in for pages: item n is "page" n, the relevant ones are gold.
            record = {
                "index": index, "doc": f"{name}/{qid}", "split": "ir", "question": question,
                "gold_pages": [n for n, d in enumerate(chosen, start=1) if d in relevant],
                "pages": list(range(1, len(chosen) + 1)), "passages": chosen,
            }  # fmt: skip
            sink.store(prompt, record, t0)


def ict(args: argparse.Namespace) -> None:
    """Inverse-cloze prompts from the dev train documents, through the shipped pipeline."""
    from sqlalchemy import select

    from pipeline.answering.prompt import build_prompt, read_texts, token_counter
    from pipeline.library.documents import resolve_documents
    from storage import Block

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    answerer = open_answerer(args.library)
    cfg = answerer.config
    generator = answerer.generator()
    sink = _Sink(out, generator, args.layer)
    count = token_counter(generator)
    documents = sorted({q["doc_id"] for q in json.loads(SAMPLES.read_text())})
    for doc in (d for d in documents if split_of(d) == "train"):
        doc_ids = resolve_documents(answerer.library, [doc])
        with answerer.library.sessions() as session:
            rows = session.execute(
                select(Block.page, Block.text)
                .where(Block.doc_id.in_(doc_ids), Block.kind == "text")
                .order_by(Block.page, Block.reading_order)
            ).all()
        candidates = [(page, s) for page, text in rows for s in cloze_sentences(text)]
        rng = random.Random(doc)
        rng.shuffle(candidates)
        taken, pages_used = 0, set()
        for page, sentence in candidates:
            if taken == args.per_document:
                break
            if page in pages_used:  # one sentence per page: more pages, not more of one
                continue
            index = f"ict-{hashlib.sha1(f'{doc}|{page}|{sentence}'.encode()).hexdigest()[:12]}"
            if index in sink.done:
                taken += 1
                pages_used.add(page)
                continue
            t0 = time.perf_counter()
            prepared = answerer.prepare(sentence, doc_ids=doc_ids, config=cfg)
            items = list(prepared.items)
            pages = [i.page for i in items]
            if page not in pages or set(pages) == {page}:
                continue
            cut = 0
            for n, item in enumerate(items):  # the sentence itself leaves the evidence (ICT)
                if sentence in " ".join(item.text.split()):
                    text = " ".join(item.text.split()).replace(sentence, " ").strip()
                    items[n] = dataclasses.replace(item, text=text, tokens=count(text))
                    cut += 1
            texts, _ = read_texts(items, cfg, generator)
            prompt = build_prompt(sentence, items, texts, prepared.file_names, cfg, generator)
            record = {
                "index": index, "doc": doc, "split": "ict", "question": sentence,
                "gold_pages": [page], "pages": pages, "sentence_cut": cut,
            }  # fmt: skip
            sink.store(prompt, record, t0)
            taken += 1
            pages_used.add(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="source", required=True)
    p = sub.add_parser("ir", help="judged queries of ../shared/data/ir")
    p.add_argument("--collections", nargs="*", default=list(COLLECTIONS))
    p.add_argument("--per-collection", type=int, default=1000, help="queries per collection")
    p.add_argument("--depth", type=int, default=20, help="retrieved passages to choose from")
    p.add_argument("--budget", type=int, default=1000, help="evidence tokens per prompt")
    p.add_argument("--max-items", type=int, default=12)
    p.add_argument("--max-positives", type=int, default=2, help="relevant passages per prompt")
    p.add_argument(
        "--passage-tokens", type=int, default=120,
        help="cut longer passages (the sampler's items average ~90 tokens)",
    )  # fmt: skip
    p = sub.add_parser("ict", help="inverse cloze on the dev train documents")
    p.add_argument("--library", required=True, help="a library holding the dev documents")
    p.add_argument("--per-document", type=int, default=20, help="pseudo-questions per document")
    for p in sub.choices.values():
        p.add_argument("--out", required=True, help="a work folder (resumable)")
        p.add_argument("--layer", type=int, default=4, help="save the states after this layer")
        p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"ir": ir, "ict": ict}[args.source](args)


if __name__ == "__main__":
    main()
