"""Block vectors stored at ingest (issue 24): ingest pages/s and the sample stage's ms, with and
without `IngestConfig.store_block_vectors`, on the same documents and questions in one run.

Run by hand (never in tests); the libraries are new folders under --out:

    HF_HUB_OFFLINE=1 FOLIO_MODEL_CACHE=CACHE FOLIO_GENERATOR__RUNTIME=torch \\
        .venv/bin/python -m bench.block_vectors --out OUT \\
        --docs 2303.05039v2.pdf 2401.18059v1.pdf 2023.acl-long.386.pdf

For each setting: the documents are ingested into a fresh library (hybrid index, the encoders
warmed first), then every dev question about them is prepared (retrieve, sample, prompt; no
generation) with the sampler's in-memory embedding cache emptied before each, as for a question
about blocks no earlier question read. Without stored vectors the first question over a block
embeds it and stores it (the lazy fill), so each question is asked twice: `first` and `again`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "mmlongbench" / "dev"


def _run(out: Path, docs: list[Path], questions: list[dict], store: bool) -> dict:
    from models.sampler import EvidenceSampler
    from pipeline.answering.answer import Answerer
    from pipeline.ingestion.ingest import ingest
    from pipeline.ingestion.parse import sha256_file
    from pipeline.library.search import LibraryIndex
    from pipeline.settings import Settings
    from storage import StorageConfig, open_library

    settings = Settings.load()
    root = out / f"lib-{'stored' if store else 'none'}"
    shutil.rmtree(root, ignore_errors=True)
    library = open_library(StorageConfig(library=root))
    index = LibraryIndex(library, settings.retrieval, settings.encoders)
    index.dense_encoder.encode_documents(["Folio warms its encoders."])  # load outside the timing
    start = time.perf_counter()
    results = ingest(
        docs, library, parse_config=settings.parse, chunk_config=settings.chunk,
        ingest_config=settings.ingest.model_copy(update={"store_block_vectors": store}),
        index=index,
    )  # fmt: skip
    ingest_s = time.perf_counter() - start
    pages = sum(r.pages for r in results)
    with library.engine.begin() as conn:  # the WAL into the file, so its size is the data's
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db_mb = (root / "folio.db").stat().st_size / 2**20
    answerer = Answerer(
        library, index, settings.answer, settings.generator, settings.encoders,
        model_cache=settings.model_cache,
    )  # fmt: skip
    doc_ids = {path.name: sha256_file(path) for path in docs}
    sampler: EvidenceSampler = answerer.sampler(
        settings.answer.sampler, answerer.generator(settings.generator)
    )
    index.search("Folio warms its index.", k=1)  # not a question: it would store vectors
    timings: dict[str, list[float]] = {"first": [], "again": []}
    evidence: list[list[tuple[int, str]]] = []  # (page, text) of each item, first round
    for round_name in timings:
        for q in questions:
            sampler.cache.texts.clear()
            prepared = answerer.prepare(q["question"], doc_ids=[doc_ids[q["doc_id"]]])
            (ms,) = [s.ms for s in prepared.stages if s.name == "sample"]
            timings[round_name].append(ms)
            if round_name == "first":
                evidence.append([(item.page, item.text) for item in prepared.items])
    library.close()
    return {
        "evidence": evidence,
        "store_block_vectors": store,
        "pages": pages,
        "ingest_s": round(ingest_s, 2),
        "pages_per_s": round(pages / ingest_s, 2),
        "db_mb_after_ingest": round(db_mb, 2),
        **{
            f"sample_ms_{name}": {
                "median": round(statistics.median(values), 1),
                "mean": round(statistics.fmean(values), 1),
                "n": len(values),
            }
            for name, values in timings.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the two libraries")
    parser.add_argument("--docs", nargs="+", required=True, help="dev document file names")
    parser.add_argument(
        "--order", nargs="+", choices=["none", "stored"], default=["none", "stored"],
        help="the settings to run, in this order (none: store_block_vectors off)",
    )  # fmt: skip
    args = parser.parse_args()
    docs = [DEV / "documents" / name for name in args.docs]
    samples = json.loads((DEV / "samples.json").read_text())
    questions = [s for s in samples if s["doc_id"] in set(args.docs)]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [_run(args.out, docs, questions, name == "stored") for name in args.order]
    evidence = [row.pop("evidence") for row in rows]
    same = sum(all(run[i] == evidence[0][i] for run in evidence) for i in range(len(questions)))
    print(json.dumps({"runs": rows, "same_evidence": f"{same}/{len(questions)}"}, indent=2))


if __name__ == "__main__":
    main()
