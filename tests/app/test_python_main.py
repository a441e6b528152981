"""README's Python example runs from any `__main__`: a script without a main guard, stdin,
`python -c`, a notebook kernel. Each run is a subprocess in a folder holding `papers/`, as a user's.

The code is README's own ```python block under "## Python", so README and these tests cannot drift.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import Folio

README = Path(__file__).resolve().parents[2] / "README.md"
PDF_NAMES = ("guide-1.pdf", "guide-2.pdf")  # two, so two parser workers run at once


def readme_example() -> str:
    """The ```python block that follows README's "## Python" heading."""
    text = README.read_text()
    section = text.split("\n## Python\n", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "README's Python section has no ```python block"
    code = found.group(1)
    assert '"papers/"' in code and 'library="my-library"' in code, "the example's paths changed"
    return code


@pytest.fixture
def folder(tmp_path: Path, sample_pdf: Path) -> Path:
    """A user's folder: `papers/` with two PDFs (different bytes: two documents)."""
    papers = tmp_path / "papers"
    papers.mkdir()
    for name in PDF_NAMES:
        (papers / name).write_bytes(sample_pdf.read_bytes() + f"\n% {name}\n".encode())
    return tmp_path


def _run(args: list[str], folder: Path, stdin: str | None = None) -> str:
    env = dict(os.environ)
    # Keyword search only: what is tested is ingestion, which the dense encoder's load would slow.
    env.update({"FOLIO_RETRIEVAL__MODE": "bm25", "FOLIO_RETRIEVAL__FUSION__DENSE_WEIGHT": "0"})
    done = subprocess.run(
        [sys.executable, *args], cwd=folder, input=stdin, capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stdout


def _assert_ingested_once(stdout: str, folder: Path) -> None:
    """Each PDF printed once by `folio.documents()` (a worker that ran the caller's code again
    would print, and ingest, again) and stored once."""
    for name in PDF_NAMES:
        lines = [line for line in stdout.splitlines() if f" {name} 2 ok" in line]
        assert len(lines) == 1, stdout
    with Folio(library=folder / "my-library") as folio:
        documents = folio.documents()
    assert sorted((d.file_name, d.status) for d in documents) == [(n, "ok") for n in PDF_NAMES]


def test_a_script_without_a_main_guard(folder: Path) -> None:
    (folder / "ex.py").write_text(readme_example())
    _assert_ingested_once(_run(["ex.py"], folder), folder)


def test_code_piped_to_python_on_stdin(folder: Path) -> None:
    _assert_ingested_once(_run(["-"], folder, stdin=readme_example()), folder)


def test_python_dash_c(folder: Path) -> None:
    _assert_ingested_once(_run(["-c", readme_example()], folder), folder)


# What a Jupyter/IPython kernel does with a cell, without ipykernel (not a dependency): the
# kernel's `__main__` is a module IPython creates, with no `__file__`, put in sys.modules; a
# cell's code is compiled under a pseudo file name and exec'd in that module's namespace.
_KERNEL = """
import sys, types
main = types.ModuleType("__main__")
sys.modules["__main__"] = main
sys.argv = ["ipykernel_launcher.py", "-f", "kernel-1234.json"]
exec(compile(sys.stdin.read(), "<ipython-input-1-0123456789ab>", "exec"), main.__dict__)
"""


def test_a_notebook_cell(folder: Path) -> None:
    """Emulates a notebook kernel running README's example as one cell (see `_KERNEL`)."""
    _assert_ingested_once(_run(["-c", _KERNEL], folder, stdin=readme_example()), folder)
