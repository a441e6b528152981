"""Crash safety: SIGKILL `folio ingest` at random moments, check the library after each kill,
then finish the ingest and compare the library with one that was never killed.

The harness that `python -m bench.crash` (RELIABILITY.md's 20 kills) and
tests/reliability/test_crash.py share. It drives the app as a user does: the `folio` command,
and `Folio.check` for checks in this process.

Each round runs the real command line, `folio -v --library L ingest FOLDER`, as a subprocess on
a folder of links to real PDFs of the shared data folder's pdfs, and SIGKILLs
the main process at a seeded moment within the duration of a clean run measured first (parser
workers it leaves behind are killed next, so the check sees a quiet library). Rounds either start
from an empty library ("fresh") or re-ingest everything into the library the last kill left
("reindex"), so kills land while parsing, inside a document's transaction, while indexing and while
the index is saved over an earlier one. Where a kill landed is read from the child's log (`-v`):
the last of "storing <file>", "index: adding", "index: saving", ... it wrote.

After each kill `folio check` must pass (database integrity, no torn index, every stored chunk in
every index part after the replay, nothing extra). Now and then, and always at the end, the plain
ingest is run to completion and the library must equal the clean run's: the same documents with
the same status, pages and chunks, and `folio check` clean, leftovers included.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

# Papers, plus robustness files that fail (empty, encrypted), need OCR, or hold one odd page.
DEFAULT_FILES = (
    "papers/papermage__papermage.pdf",
    "papers/paperqa__pasa.pdf",
    "papers/unstructured__multi-column_DPR.pdf",
    "robustness/pdfplumber__empty.pdf",
    "robustness/pdfplumber__password-example.pdf",
    "robustness/docling__ocr_test_rotated_90.pdf",
    "robustness/docling__invisible_text_layer.pdf",
    "robustness/pdfplumber__malformed-from-issue-932.pdf",
)
BM25_ONLY = {"FOLIO_RETRIEVAL__MODE": "bm25", "FOLIO_RETRIEVAL__FUSION__DENSE_WEIGHT": "0"}
BM25_ONLY_SETTINGS = {"retrieval": {"mode": "bm25", "fusion": {"dense_weight": 0.0}}}
# Lines of the clean run near which half the kills are aimed (the other half fall anywhere).
_TARGETS = re.compile(r"pipeline\.ingest: storing |index: adding \d+ chunks|index: saving \d+ chunks")

# The last of these lines the child logged says what it was doing when it died.
_PHASES = [
    (re.compile(r"pipeline\.ingest: storing "), "store"),
    (re.compile(r"index: adding \d+ chunks"), "index-add"),
    (re.compile(r"index: added \d+ chunks"), "parse"),  # back to waiting for the parser workers
    (re.compile(r"indexing chunks \d+-\d+ of"), "index-replay"),
    (re.compile(r"index: replayed the database"), "index-replay"),
    (re.compile(r"index: saving \d+ chunks"), "index-save"),
    (re.compile(r"index: saved generation"), "exit"),
]


@dataclass
class Round:
    number: int
    kind: str  # "fresh" or "reindex"
    delay_s: float
    killed: bool
    phase: str = ""
    last_line: str = ""
    orphans: int = 0  # parser workers still alive after the main process was killed
    check_rc: int | None = None
    check_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)
    completed: bool | None = None  # a run to completion after this kill matched the clean run


def shared_pdf_folder(dest: Path, files: tuple[str, ...] | list[str], data: Path) -> Path:
    """A folder of symbolic links to the shared PDFs (they are never copied).

    Raises:
        FileNotFoundError: a file is not in `data/pdfs`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for rel in files:
        source = data / "pdfs" / rel
        if not source.is_file():
            raise FileNotFoundError(f"{source}: not found (set FOLIO_SHARED_DATA)")
        link = dest / source.name
        if not link.exists():
            link.symlink_to(source)
    return dest


def folio_command() -> list[str]:
    """The `folio` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("folio")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from app.cli import main; main()"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra or {})}
    env.pop("FOLIO_LIBRARY", None)
    return env


def run_folio(args: list[str], env: dict[str, str], log: Path, timeout: float = 3600) -> int:
    """Run `folio ARGS` to its end; its output goes to `log`."""
    with log.open("w") as out:
        return subprocess.run(
            [*folio_command(), *args], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout,
            check=False,
        ).returncode  # fmt: skip


def run_folio_timed(args: list[str], env: dict[str, str], log: Path) -> tuple[int, float, list[tuple[float, str]]]:
    """Run `folio ARGS` to its end: (exit code, seconds, [(seconds since start, line)])."""
    t0 = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*folio_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            text=True, bufsize=1,
        )  # fmt: skip
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
            out.write(line)
        rc = proc.wait()
    return rc, time.perf_counter() - t0, lines


def kill_during(args: list[str], env: dict[str, str], log: Path, delay: float) -> tuple[bool, int]:
    """Start `folio ARGS`, SIGKILL it after `delay` seconds; (killed, orphaned workers).

    The orphans (parser workers of the killed process) are killed after it and waited for.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*folio_command(), *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            proc.wait(timeout=delay)
            return False, 0
        except subprocess.TimeoutExpired:
            pass
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    alive = [c for c in children if _alive(c)]
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=30)
    return True, len(alive)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def phase_of(log_text: str) -> tuple[str, str]:
    """Where the child was when it died, from the last phase line it logged."""
    phase, last = "", ""
    for line in log_text.splitlines():
        for pattern, name in _PHASES:
            if pattern.search(line):
                phase, last = name, line.strip()
    return phase, last


def check(
    library: Path, env: dict[str, str], log: Path, *, settings: dict | None = None, in_process: bool = False
) -> tuple[int, dict[str, list[str]]]:
    """`folio check` on the library: (exit code, its lines by severity).

    `in_process`: through `Folio.check` here (with `settings`), not a `folio check` process.
    """
    if in_process:
        from app.api import Folio

        with Folio(library=library, **(settings or {})) as folio:
            report = folio.check()
        log.write_text("\n".join([f.line() for f in report.findings] + [report.summary()]) + "\n")
        rc = 0 if report.ok else 1
    else:
        rc = run_folio(["--library", str(library), "check"], env, log)
    lines: dict[str, list[str]] = {"error": [], "leftover": [], "info": []}
    for line in log.read_text().splitlines():
        kind = line.split(":", 1)[0]
        if kind in lines:
            lines[kind].append(line)
    return rc, lines


def library_state(library: Path) -> dict[str, tuple[str, int, int]]:
    """doc_id -> (status, pages, chunks), read straight from the database."""
    import sqlite3

    db = sqlite3.connect(f"file:{library / 'folio.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT d.id, d.status, d.page_count, (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id) "
            "FROM documents d"
        ).fetchall()
    finally:
        db.close()
    return {doc_id: (status, pages, chunks) for doc_id, status, pages, chunks in rows}


def run(
    kills: int,
    seed: int,
    *,
    data_dir: Path,
    files: tuple[str, ...] | list[str] = DEFAULT_FILES,
    bm25_only: bool = False,
    work: Path | None = None,
    complete_every: float = 0.25,
    in_process_check: bool = False,
    on_round=None,
) -> dict:
    """Kill `kills` ingests at seeded moments; check after each; finish and compare at the end.

    Args:
        kills: how many kills.
        data_dir: the shared data folder (`files` are under its `pdfs`).
        seed: seeds the moments, the kinds of round, and when to run to completion.
        files: PDFs, relative to the shared `pdfs` folder.
        bm25_only: index with BM25 alone (no embedding model: faster).
        work: folder for the libraries and logs (a temporary one when None; removed after).
        complete_every: the chance that a kill is followed by a run to completion.
        in_process_check: check through `Folio.check` in this process (saves a process start
            per check), not `folio check`.
        on_round: called with each finished `Round`.

    Returns:
        The report: the clean run's duration and state, every round, and the totals.
    """
    rng = random.Random(seed)
    env = child_env(BM25_ONLY if bm25_only else None)
    temp = None
    if work is None:
        temp = tempfile.mkdtemp(prefix="folio-crash-")
        work = Path(temp)
    work.mkdir(parents=True, exist_ok=True)
    try:
        checker = functools.partial(
            check, settings=BM25_ONLY_SETTINGS if bm25_only else None, in_process=in_process_check
        )
        folder = shared_pdf_folder(work / "pdfs", files, data_dir)
        return _run(kills, rng, files, folder, env, work, complete_every, on_round, bm25_only, seed, checker)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _run(kills, rng, files, folder, env, work, complete_every, on_round, bm25_only, seed, check) -> dict:
    start = time.perf_counter()
    reference = work / "reference"
    library = work / "library"
    shutil.rmtree(reference, ignore_errors=True)
    clean_rc, duration, clean_lines = run_folio_timed(
        ["-v", "--library", str(reference), "ingest", str(folder)], env, work / "clean.log"
    )
    targets = [t for t, line in clean_lines if _TARGETS.search(line)]
    expected = library_state(reference)
    rc, lines = check(reference, env, work / "clean-check.log")
    if rc != 0 or lines["error"] or lines["leftover"]:
        raise RuntimeError(f"the clean run's library does not pass the check: {lines}")
    rounds: list[Round] = []
    completions: list[bool] = []
    attempts = 0
    while sum(r.killed for r in rounds) < kills:
        attempts += 1
        if attempts > 3 * kills + 10:
            raise RuntimeError("too many runs ended before their kill; is the clean run's duration right?")
        kind = "fresh" if not library.exists() or rng.random() < 0.5 else "reindex"
        if kind == "fresh":
            shutil.rmtree(library, ignore_errors=True)
        # NOTE: half the kills anywhere in the run; half just around a moment where the clean
        # run stored a document, indexed it, or saved the index (runs vary, so this only
        # makes those windows likelier: where a kill landed is read from the child's log).
        if targets and rng.random() < 0.5:
            delay = max(0.5, rng.choice(targets) + rng.uniform(-0.5, 1.0))
        else:
            delay = rng.uniform(0.03, 0.97) * duration
        args = ["-v", "--library", str(library), "ingest", str(folder), *(["--reindex"] if kind == "reindex" else [])]
        n = len(rounds) + 1
        log = work / f"round-{n:02d}.log"
        killed, orphans = kill_during(args, env, log, delay)
        r = Round(n, kind, round(delay, 2), killed, orphans=orphans)
        r.phase, r.last_line = phase_of(log.read_text())
        if not killed:
            r.phase = "ended before the kill"
        elif not r.phase:
            r.phase = "parse" if orphans else "startup"  # parser workers had started
        t1 = time.perf_counter()
        r.check_rc, lines = check(library, env, work / f"round-{n:02d}-check.log")
        r.check_s = round(time.perf_counter() - t1, 1)
        r.errors, r.leftovers, r.infos = lines["error"], lines["leftover"], lines["info"]
        if killed and rng.random() < complete_every:
            r.completed = _complete(library, folder, env, expected, work / f"round-{n:02d}-complete", check)
            completions.append(r.completed)
        rounds.append(r)
        if on_round is not None:
            on_round(r)
    final = _complete(library, folder, env, expected, work / "final", check)
    killed = [r for r in rounds if r.killed]
    phases: dict[str, int] = {}
    for r in killed:
        phases[r.phase] = phases.get(r.phase, 0) + 1
    return {
        "seed": seed,
        "files": list(files),
        "bm25_only": bm25_only,
        "clean_run_s": round(duration, 1),
        "clean_run_rc": clean_rc,
        "kill_targets_s": [round(t, 1) for t in targets],
        "documents": len(expected),
        "kills": len(killed),
        "ended_before_kill": len(rounds) - len(killed),
        "kills_by_phase": phases,
        "checks_passed": sum(r.check_rc == 0 and not r.errors for r in rounds),
        "checks": len(rounds),
        "orphaned_workers": sum(r.orphans for r in rounds),
        "completions_matching": sum(completions) + final,
        "completions": len(completions) + 1,
        "final_matches_clean_run": final,
        "wall_s": round(time.perf_counter() - start, 1),
        "rounds": [asdict(r) for r in rounds],
    }


def _complete(library: Path, folder: Path, env: dict[str, str], expected: dict, prefix: Path, check) -> bool:
    """Run the plain ingest to its end; True if the library then equals the clean run's and
    `folio check` finds nothing at all (leftovers included)."""
    run_folio(["-v", "--library", str(library), "ingest", str(folder)], env, prefix.with_suffix(".log"))
    rc, lines = check(library, env, prefix.with_name(prefix.name + "-check.log"))
    return rc == 0 and not lines["error"] and not lines["leftover"] and library_state(library) == expected
