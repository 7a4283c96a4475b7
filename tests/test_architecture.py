"""The shape of the package: one way for dependencies, Optuna in one place, modules a reader can hold.

Read from the source with ``ast``, so a violation names the file and line
before anything runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "autotune"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """Every autotune module this file imports, at any depth of the file (lazy imports count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("autotune") and target != name:
                found.append((target, node.lineno))
    return found


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {m: sorted({t for t, _ in _imports(p, modules)}) for m, p in modules.items()}
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_tuning_imports_optuna() -> None:
    pattern = re.compile(r"^\s*(import|from) optuna", re.M)
    offenders = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                 if pattern.search(p.read_text()) and "tuning" not in p.relative_to(PACKAGE).parts]
    assert offenders == []


def test_no_fence_comments() -> None:
    fence = re.compile(r"\((begin|end)\) ---")
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in PACKAGE.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if fence.search(line)]
    assert offenders == []


def test_modules_fit_in_a_reading() -> None:
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("name", __import__("autotune").__all__)
def test_public_api_resolves(name: str) -> None:
    import autotune

    assert getattr(autotune, name) is not None


def test_the_walker_sees_a_cycle(tmp_path: Path) -> None:
    """The cycle test could pass by seeing no imports at all: it must see these two."""
    modules = _modules()
    edges = {t for t, _ in _imports(PACKAGE / "tuning" / "loop.py", modules)}
    assert {"autotune.trial", "autotune.tuning.records", "autotune.spec"} <= edges
    lazy = {t for t, _ in _imports(PACKAGE / "cli" / "inspect.py", modules)}
    assert "autotune.verify" in lazy  # imported inside a function
