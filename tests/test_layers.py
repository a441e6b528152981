"""The layer picture in DESIGN.md, enforced: every project import must follow an allowed arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("app", "pipeline", "retrieval", "models", "kernels", "storage")

# DESIGN.md: app -> pipeline -> retrieval -> kernels; pipeline -> models -> kernels; pipeline -> storage.
# NOTE: `app` reaches the lower layers only through `pipeline` (no retrieval, model or SQL logic
# in app/); it may read each layer's plain config models to compose the one Settings object.
ALLOWED: dict[str, set[str]] = {
    "app": {"pipeline"},
    "pipeline": {"retrieval", "models", "storage"},
    "retrieval": {"kernels"},
    "models": {"kernels"},
    "kernels": set(),
    "storage": set(),
}
CONFIG_MODULES = {f"{layer}.config" for layer in LAYERS}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _violations() -> list[str]:
    bad = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            for lineno, name in _imports(path):
                target = name.split(".")[0]
                if target not in LAYERS or target == layer:
                    continue
                module = ".".join(name.split(".")[:2])
                if layer == "app" and module in CONFIG_MODULES:
                    continue
                if target not in ALLOWED[layer]:
                    bad.append(f"{path.relative_to(ROOT)}:{lineno} {layer} -> {name}")
    return bad


def test_imports_follow_the_layer_picture() -> None:
    assert _violations() == []


def test_checker_catches_a_forbidden_arrow(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from storage.db import open_library\nimport kernels\n")
    names = [name for _, name in _imports(bad)]
    assert names == ["storage.db.open_library", "kernels"]


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_is_a_package(layer: str) -> None:
    assert (ROOT / layer / "__init__.py").is_file()
