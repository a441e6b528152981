"""SQLite against PostgreSQL in one run: storing a parsed paper, opening a library, a full
ingest of the four shared papers, and search.

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python -m bench.postgres > bench-work/postgres.json

The PostgreSQL cluster is started by this script in a temporary folder on 127.0.0.1 (Debian's
defaults, fsync on), as `nobody` when run as root, and removed at the end. Needs Debian's
`postgresql` (make system-deps installs it) and the shared papers (`../shared/data/pdfs/papers`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import create_engine, text

from app import Folio
from pipeline.config import ChunkConfig, IngestConfig, ParseConfig
from pipeline.ingestion.ingest import store_parsed
from pipeline.ingestion.parse import parse_pdf
from storage import StorageConfig, open_library

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FOLIO_SHARED_DATA", ROOT.parent / "shared" / "data"))
PAPERS = sorted((SHARED / "pdfs" / "papers").glob("*.pdf"))


def _pg_bin() -> Path:
    """The folder of initdb and pg_ctl: the newest Debian version, else PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    if found is None:
        raise SystemExit("no PostgreSQL binaries: apt-get install postgresql (make system-deps)")
    return Path(found).resolve().parent


def _as_server_user(argv: list[str]) -> list[str]:
    # NOTE: initdb refuses to run as root.
    return ["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv


def start_pg() -> tuple[str, Path]:
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="folio-pgbench-", dir="/tmp" if os.geteuid() == 0 else None))
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        _as_server_user([str(bindir / "initdb"), "-D", str(root / "data"), "-U", "folio",
                         "--auth=trust", "-E", "UTF8"]),
        check=True, capture_output=True, cwd=root,
    )  # fmt: skip
    subprocess.run(
        _as_server_user([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"),
                         "-w", "-o", f"-k {root} -p {port} -c listen_addresses=127.0.0.1", "start"]),
        check=True, capture_output=True, cwd=root,
    )  # fmt: skip
    return f"postgresql+psycopg://folio@127.0.0.1:{port}", root


def stop_pg(root: Path) -> None:
    subprocess.run(
        _as_server_user([str(_pg_bin() / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"]),
        capture_output=True, cwd=root,
    )  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


def new_db(server: str, name: str) -> str:
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"


def main() -> None:
    if not PAPERS:
        raise SystemExit(f"no papers in {SHARED / 'pdfs' / 'papers'} (set FOLIO_SHARED_DATA)")
    server, pgroot = start_pg()
    work = Path(tempfile.mkdtemp(prefix="folio-bench-"))
    out: dict = {"papers": {p.name: None for p in PAPERS}, "load_avg_start": os.getloadavg()}
    try:
        parsed = {p: parse_pdf(p, ParseConfig(ocr="never")) for p in PAPERS}
        out["papers"] = {p.name: {"pages": d.page_count, "blocks": sum(len(pg.blocks) for pg in d.pages)} for p, d in parsed.items()}
        store = {"chunk_config": ChunkConfig(), "ingest_config": IngestConfig(keep_source=False), "index": None}
        # 1. store_parsed alone: one transaction per paper (document, pages, blocks with RETURNING, chunks).
        times: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        for rep in range(5):
            for backend in ("sqlite", "postgresql"):
                url = None if backend == "sqlite" else new_db(server, f"store{rep}")
                library = open_library(StorageConfig(library=work / f"store-{backend}-{rep}", database_url=url))
                for p, doc in parsed.items():
                    t0 = time.perf_counter()
                    store_parsed(replace(doc, doc_id=doc.doc_id), p, library, **store)
                    times[backend].append((time.perf_counter() - t0) * 1000)
                library.close()
        out["store_ms_per_paper"] = {b: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for b, v in times.items()}

        # 2. open_library of a fresh database (create + stamp) and of an existing one.
        opens: dict[str, dict[str, list[float]]] = {"sqlite": {"fresh": [], "existing": []}, "postgresql": {"fresh": [], "existing": []}}
        for rep in range(3):
            for backend in ("sqlite", "postgresql"):
                url = None if backend == "sqlite" else new_db(server, f"open{rep}")
                config = StorageConfig(library=work / f"open-{backend}-{rep}", database_url=url)
                for kind in ("fresh", "existing"):
                    t0 = time.perf_counter()
                    open_library(config).close()
                    opens[backend][kind].append((time.perf_counter() - t0) * 1000)
        out["open_library_ms_median"] = {b: {k: statistics.median(v) for k, v in d.items()} for b, d in opens.items()}

        # 3. Full folio ingest of the four papers (parse in the worker, store, BM25 index), and search.
        settings = {"retrieval": {"mode": "bm25", "fusion": {"dense_weight": 0, "splade_weight": 0}},
                    "parse": {"ocr": "never"}, "ingest": {"workers": 1}}
        ingest_s: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        search_ms: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        queries = ["dense passage retrieval", "layout analysis of scientific papers", "paper search agent",
                   "multi-column reading order", "evaluation results table", "visual document models"]
        for rep in range(2):
            for backend in ("sqlite", "postgresql"):
                url = None if backend == "sqlite" else new_db(server, f"ingest{rep}")
                with Folio(library=work / f"ingest-{backend}-{rep}", database_url=url, **settings) as folio:
                    t0 = time.perf_counter()
                    results = folio.ingest(PAPERS)
                    ingest_s[backend].append(time.perf_counter() - t0)
                    assert all(r.status == "added" for r in results), results
                    folio.search(queries[0], k=10)  # index opened
                    for q in queries * 3:
                        t0 = time.perf_counter()
                        folio.search(q, k=10)
                        search_ms[backend].append((time.perf_counter() - t0) * 1000)
        out["ingest_4_papers_s"] = {b: v for b, v in ingest_s.items()}
        out["search_ms_median"] = {b: statistics.median(v) for b, v in search_ms.items()}
        out["load_avg_end"] = os.getloadavg()
    finally:
        stop_pg(pgroot)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
