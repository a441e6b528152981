"""The layer picture in DESIGN.md, enforced: every project import must follow an allowed arrow,
nothing imports another package's private names, and tests import nothing from bench/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("app", "pipeline", "retrieval", "models", "kernels", "storage")
PROJECT = (*LAYERS, "bench")  # every top-level folder of project code (tests aside)

# DESIGN.md: app -> pipeline -> retrieval -> kernels; pipeline -> models -> kernels; pipeline -> storage.
# NOTE: `app` reaches the lower layers only through `pipeline` (no retrieval, model or SQL logic
# in app/); it may read each layer's plain config models to compose the one Settings object.
# Benchmarks measure any layer, through public names only; nothing imports bench/.
ALLOWED: dict[str, set[str]] = {
    "app": {"pipeline"},
    "pipeline": {"retrieval", "models", "storage"},
    "retrieval": {"kernels"},
    "models": {"kernels"},
    "kernels": set(),
    "storage": set(),
    "bench": set(LAYERS),
    "tests": set(LAYERS),
}
CONFIG_MODULES = {f"{layer}.config" for layer in LAYERS}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import in a file, function-level ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _files(root: Path, top: str) -> list[Path]:
    return sorted((root / top).rglob("*.py"))


def layer_violations(root: Path) -> list[str]:
    """`file:line importer -> name` for every import that follows no allowed arrow."""
    bad = []
    for top in (*PROJECT, "tests"):
        for path in _files(root, top):
            for lineno, name in _imports(path):
                target = name.split(".")[0]
                if target not in PROJECT or target == top:
                    continue
                module = ".".join(name.split(".")[:2])
                if top == "app" and module in CONFIG_MODULES:
                    continue
                if target not in ALLOWED[top]:
                    bad.append(f"{path.relative_to(root)}:{lineno} {top} -> {name}")
    return bad


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def private_imports(root: Path) -> list[str]:
    """`file:line name` for every import of a private name of another module.

    A package's private modules (`models/_packaged.py`) serve the rest of that top-level package,
    and a test under tests/<package>/ may import them (it is their unit test); a private name
    inside a module (`_helper`) is that module's alone, whoever imports it.
    """
    bad = []
    for top in (*PROJECT, "tests"):
        for path in _files(root, top):
            rel = path.relative_to(root)
            for lineno, name in _imports(path):
                parts = name.split(".")
                if parts[0] not in PROJECT:
                    continue
                private = [i for i in range(1, len(parts)) if _private(parts[i])]
                if not private:
                    continue
                own_test = top == "tests" and len(rel.parts) > 2 and rel.parts[1] == parts[0]
                inside = parts[0] == top or own_test
                if inside and all(_is_module(root, parts[: i + 1]) for i in private):
                    continue
                bad.append(f"{rel}:{lineno} {name}")
    return bad


def _is_module(root: Path, parts: list[str]) -> bool:
    path = root.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sys_path_edits(root: Path) -> list[str]:
    """`file:line` of every use of `sys.path` in bench/ (it runs as `python -m bench.X`)."""
    bad = []
    for path in _files(root, "bench"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                bad.append(f"{path.relative_to(root)}:{node.lineno}")
    return bad


def test_imports_follow_the_layer_picture() -> None:
    assert layer_violations(ROOT) == []


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports(ROOT) == []


def test_bench_does_not_edit_sys_path() -> None:
    assert sys_path_edits(ROOT) == []


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checkers_find_forbidden_imports(tmp_path: Path) -> None:
    _write(tmp_path, "retrieval/_postings.py", "")
    lazy_pipeline = "def f():\n    from pipeline.config import X\n"
    _write(tmp_path, "retrieval/bad.py", "import kernels\n" + lazy_pipeline)
    _write(
        tmp_path,
        "app/cli.py",
        "from storage.config import StorageConfig\nfrom pipeline.ingestion.ingest import ingest\n"
        "from storage.db import open_library\n",
    )
    path_edit = "import sys\nsys.path.insert(0, '.')\n"
    _write(tmp_path, "bench/run.py", path_edit + "from models import _packaged\n")
    _write(
        tmp_path,
        "tests/retrieval/test_x.py",
        "from retrieval._postings import TermWeights\nfrom retrieval.dense import _read\n"
        "from bench.fuzz import run\n",
    )
    _write(tmp_path, "tests/models/test_y.py", "from retrieval._postings import TermWeights\n")
    _write(
        tmp_path,
        "retrieval/sparse.py",
        "from retrieval._postings import TermWeights\nfrom retrieval.dense import _read\n",
    )
    assert layer_violations(tmp_path) == [
        "app/cli.py:3 app -> storage.db.open_library",  # storage.config is allowed, pipeline too
        "retrieval/bad.py:3 retrieval -> pipeline.config.X",  # config is allowed to app alone
        "tests/retrieval/test_x.py:3 tests -> bench.fuzz.run",
    ]
    assert private_imports(tmp_path) == [
        "retrieval/sparse.py:2 retrieval.dense._read",  # its own package, another module's name
        "bench/run.py:3 models._packaged",
        "tests/models/test_y.py:1 retrieval._postings.TermWeights",  # not its own package
        "tests/retrieval/test_x.py:2 retrieval.dense._read",  # a private name, not a module
    ]
    assert sys_path_edits(tmp_path) == ["bench/run.py:2"]


def test_import_parser_reads_every_form(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from storage.db import open_library\nimport kernels\nfrom . import near\n")
    names = [name for _, name in _imports(bad)]
    assert names == ["storage.db.open_library", "kernels"]


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_is_a_package(layer: str) -> None:
    assert (ROOT / layer / "__init__.py").is_file()
