"""Train the REFRAG chunk projector on this CPU, with the encoder and the decoder frozen.

    python -m pipeline.research.refrag_train [--out models/weights/refrag_projector_d896.pt]

Data recipe (read from ../shared/data, never copied): the page text of the MMLongBench dev
documents whose split is "train" (`pipeline.research.common.split_of`; the "val" documents are held aside for
`pipeline.research.refrag`), and the BEIR corpora of ../shared/data/ir whose document id hashes to train
(`split_of` on the id). Text is tokenised with the generator's tokenizer and cut into windows.

Phases (REFRAG trains reconstruction, then continued pre-training, each with a curriculum from
few to many chunks; phase 0 is ours, to save CPU steps):
0. alignment: the projector's output towards the mean input embedding of the chunk's tokens
   (cosine; no decoder pass, so thousands of chunks a minute);
1. reconstruction: decoder input = the projected vectors of s chunks, then the chunks' tokens;
   loss on the tokens (the decoder reproduces the text from its vectors); s = 1, 2, 4;
2. continued pre-training: s compressed chunks of context, then the next 32 tokens; loss on
   those; s = 2, 4, 8.
Chunk size k is drawn from {8, 16} per step, so one projector serves both.

The chunk feature is [mean | max] of MiniLM's token states, or with `--encoder-tokens P` the first
P token states in order (each reduced to `--token-rank` numbers by one shared linear map): the
projector then sees which tokens a chunk holds and where (BENCHMARKS, REFRAG, compares the two).

The weights (fp16, 3.4 MB; 5 MB with --encoder-tokens 24) and every setting and loss curve go
to `--out`; a run with the same arguments reproduces them (seeded; torch on CPU is deterministic
for these ops).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from pathlib import Path

import torch

from pipeline.research.common import DOCUMENTS, IR, command_line, split_of


def corpus_texts(split: str, *, max_chars_per_doc: int = 60_000) -> list[str]:
    """Texts of one split: one per MMLongBench document (its pages joined), one per BEIR doc."""
    import pymupdf

    texts: list[str] = []
    for pdf in sorted(DOCUMENTS.glob("*.pdf")):
        if split_of(pdf.name) != split:
            continue
        with pymupdf.open(pdf) as doc:
            text = "\n".join(page.get_text() for page in doc)
        texts.append(" ".join(text.split())[:max_chars_per_doc])
    for corpus in sorted(IR.glob("*/corpus.jsonl")):
        with corpus.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if split_of(str(row["_id"])) == split:
                    text = " ".join(f"{row.get('title', '')} {row.get('text', '')}".split())
                    if len(text) > 200:
                        texts.append(text)
    return texts


def token_stream(tokenizer, texts: list[str], *, seed: int) -> list[list[int]]:
    """Tokenised texts, shuffled with `seed` (documents stay whole)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [tokenizer(texts[i], add_special_tokens=False)["input_ids"] for i in order]


class Windows:
    """Random windows of n tokens from documents at least n long."""

    def __init__(self, docs: list[list[int]], seed: int) -> None:
        self.docs = docs
        self.rng = random.Random(seed)

    def sample(self, n: int) -> list[int]:
        for _ in range(10_000):
            doc = self.docs[self.rng.randrange(len(self.docs))]
            if len(doc) >= n:
                start = self.rng.randrange(len(doc) - n + 1)
                return doc[start : start + n]
        raise ValueError(f"no document has {n} tokens")


def _features(encoder, tokenizer, chunks: list[list[int]]) -> torch.Tensor:
    feats, _ = encoder.encode([tokenizer.decode(c) for c in chunks])
    return feats


def train(args: argparse.Namespace) -> dict:
    from models.config import GeneratorConfig
    from models.generator import load_generator
    from models.refrag import ChunkEncoder, ChunkProjector, embedding_norm

    torch.manual_seed(args.seed)
    cache = Path(os.environ.get("FOLIO_MODEL_CACHE", "folio-library/models"))
    generator = load_generator(GeneratorConfig(model=args.model), cache_dir=cache)
    model = generator.model
    for param in model.parameters():
        param.requires_grad_(False)
    tokenizer = generator.tokenizer
    embed = model.get_input_embeddings()
    encoder = ChunkEncoder(tokens=args.encoder_tokens)
    hidden = int(model.config.get_text_config(decoder=True).hidden_size)
    projector = ChunkProjector(
        encoder.feature_dim,
        hidden,
        width=args.width,
        norm=embedding_norm(generator),
        tokens=args.encoder_tokens,
        token_rank=args.token_rank,
    )

    t0 = time.perf_counter()
    docs = token_stream(tokenizer, corpus_texts("train"), seed=args.seed)
    windows = Windows(docs, args.seed)
    print(f"train text: {len(docs)} documents, {sum(map(len, docs))} tokens ({time.perf_counter() - t0:.0f} s)")
    log: dict[str, list] = {"align": [], "reconstruction": [], "cpt": []}

    # Phase 0: alignment to the mean token embedding (cheap, no decoder pass).
    opt = torch.optim.AdamW(projector.parameters(), lr=args.lr_align)
    for step in range(args.steps_align):
        k = random.Random(args.seed + step).choice((8, 16))
        chunks = [windows.sample(k) for _ in range(args.batch_align)]
        feats = _features(encoder, tokenizer, chunks)
        with torch.no_grad():
            target = embed(torch.tensor(chunks)).mean(1)  # [B, D]
        loss = 1 - torch.nn.functional.cosine_similarity(projector(feats), target, dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == args.steps_align - 1:
            log["align"].append([step, round(loss.item(), 4)])
            print(f"align {step}: 1-cos {loss.item():.4f}", flush=True)

    def decoder_phase(name: str, steps: int, sizes: tuple[int, ...], target_len) -> None:  # noqa: ANN001
        opt = torch.optim.AdamW(projector.parameters(), lr=args.lr)
        for step in range(steps):
            s = sizes[min(len(sizes) - 1, step * len(sizes) // steps)]  # curriculum: few -> many
            k = random.Random(args.seed * 7 + step).choice((8, 16))
            n_target = target_len(s, k)
            rows = [windows.sample(s * k + (0 if name == "reconstruction" else n_target)) for _ in range(args.batch)]
            chunks = [row[i * k : (i + 1) * k] for row in rows for i in range(s)]
            targets = torch.tensor(
                [row[: s * k] if name == "reconstruction" else row[s * k :] for row in rows]
            )  # [B, n_target]
            vectors = projector(_features(encoder, tokenizer, chunks)).view(args.batch, s, -1)
            with torch.no_grad():
                target_embeds = embed(targets)  # [B, n_target, D]
            inputs = torch.cat([vectors, target_embeds], dim=1)  # [B, s + n_target, D]
            labels = torch.cat([torch.full((args.batch, s), -100), targets], dim=1)
            loss = model(inputs_embeds=inputs, labels=labels, use_cache=False).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
            opt.step()
            log[name].append([step, s, k, round(loss.item(), 4)])
            print(f"{name} {step}: s={s} k={k} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    decoder_phase("reconstruction", args.steps_recon, (1, 2, 4), lambda s, k: s * k)
    decoder_phase("cpt", args.steps_cpt, (2, 4, 8), lambda s, k: args.continuation)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "command": command_line("pipeline.research.refrag_train", args, skip={"out"}),
        "model": args.model,
        "encoder": (
            f"all-MiniLM-L6-v2, its first {args.encoder_tokens} token states in order"
            if args.encoder_tokens
            else "all-MiniLM-L6-v2 [mean | max] of token states"
        ),
        "data": "MMLongBench dev train documents + BEIR corpora (train ids), pipeline.research.common.split_of",
        "train_tokens": sum(map(len, docs)),
        "seconds": round(time.perf_counter() - t0),
        "log": log,
    }
    projector.save(out, **settings)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {digest}) in {settings['seconds']} s")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="models/weights/refrag_projector_d896.pt")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument(
        "--encoder-tokens", type=int, default=0, metavar="P",
        help="chunk feature = the first P encoder token states in order (0: mean and max)",
    )  # fmt: skip
    parser.add_argument("--token-rank", type=int, default=64, help="with --encoder-tokens: numbers per token")
    parser.add_argument("--steps-align", type=int, default=300)
    parser.add_argument("--batch-align", type=int, default=128)
    parser.add_argument("--lr-align", type=float, default=2e-3)
    parser.add_argument("--steps-recon", type=int, default=90)
    parser.add_argument("--steps-cpt", type=int, default=90)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--continuation", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    train(parser.parse_args())


if __name__ == "__main__":
    main()
