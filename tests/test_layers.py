"""Imports only point down the layers of STYLE.md; stages in one layer never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidcolor"

LAYER = {
    "errors": 0, "frames": 0, "runtime": 0, "threads": 0, "atomic": 0,
    "io": 1, "mux": 1, "temporal": 1, "backbone": 1, "provenance": 1, "preview": 1,
    "report": 1, "gallery": 1,
    "encode": 2, "model": 2, "references": 2,
    "weights": 3, "colorize": 3, "byproducts": 3,
    "pipeline": 4, "jobs": 4,
    "segments": 5, "jobfiles": 5,
    "steps": 6,
    "batch": 7, "cli": 7,
    "__init__": 8, "__main__": 8,
}
ALLOWED_SIDEWAYS = {("cli", "batch")}  # the CLI drives the queue; batch never imports cli


def package_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("vidcolor"):
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "vidcolor" and len(parts) > 1:
                    found.add(parts[1])
    return found & set(LAYER)


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_has_a_layer():
    assert set(MODULES) <= set(LAYER), set(MODULES) - set(LAYER)


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    for target in package_imports(PACKAGE / f"{module}.py"):
        if (module, target) in ALLOWED_SIDEWAYS or target == module:
            continue
        assert LAYER[target] < LAYER[module], f"{module} imports {target}: an arrow up or sideways"


def test_library_never_prints():
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("cli", "__main__"):
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"{path.name} calls print()"
