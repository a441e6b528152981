"""A real PostgreSQL server for the storage tests, one per session, and a database per test.

The server is Debian's (`apt-get install postgresql`, binaries in /usr/lib/postgresql/N/bin) or
any on PATH; tests that need it skip with the reason when there is none. initdb refuses to run
as root, so as root the cluster belongs to `nobody` (its folder is chowned to it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pipeline.ingestion.sample import write_sample_pdf

UNPRIVILEGED = "nobody"


def _pg_bin() -> Path | None:
    """The folder of initdb/pg_ctl/postgres: newest Debian version first, then PATH."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb") and shutil.which("postgres"):
        return Path(found).resolve().parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser") is None:
        pytest.skip("running as root and `runuser` is missing: cannot start PostgreSQL as another user")
    return ["runuser", "-u", UNPRIVILEGED, "--", *argv]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temporary folder on 127.0.0.1; yields the server's base URL
    (`postgresql+psycopg://folio@127.0.0.1:PORT`), stops and removes it at the end."""
    pytest.importorskip("psycopg", reason="psycopg (psycopg[binary]) is not installed")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (apt-get install postgresql; make system-deps does)")
    # NOTE: as root, in /tmp itself: `nobody` must reach the folder, and TMPDIR may not let it.
    root = Path(tempfile.mkdtemp(prefix="folio-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    if os.geteuid() == 0:
        shutil.chown(root, UNPRIVILEGED)
    data = root / "data"
    run = {"check": True, "capture_output": True, "text": True, "cwd": root}
    try:
        subprocess.run(
            _as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "folio", "--auth=trust",
                             "-E", "UTF8", "--no-sync", "--no-instructions"]),
            **run,
        )  # fmt: skip
        # NOTE: durability is not under test; without fsync the server starts and writes faster.
        port = _free_port()
        options = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                             "-w", "-t", "60", "start"]),
            **run,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr.strip()} {log[-2000:]}")
    try:
        yield f"postgresql+psycopg://folio@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True, cwd=root,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def new_postgres_database(server: str) -> Iterator[str]:
    """A new, empty database on `server`; yields its URL and drops it afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """The URL of an empty database of its own on the session's server."""
    with new_postgres_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each test twice: the default SQLite file (None) and an empty PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def sample_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_pdf(tmp_path_factory.mktemp("sample") / "folio-guide.pdf")
