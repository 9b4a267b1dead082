"""The code base stays ruff-clean (lint and format), so style drift fails CI rather than review."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TARGETS = [p for p in ("mlm_lightning", "tests", "benchmarks") if (ROOT / p).exists()]


@pytest.mark.skipif(
    shutil.which("ruff") is None and not Path(sys.executable).with_name("ruff").exists(), reason="ruff not installed"
)
@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args: list[str]) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, *args, *TARGETS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ import graph
PACKAGE = "mlm_lightning"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every import of a package module in ``path``.

    Function-level imports count too: they break a cycle at import time but not the dependency.
    """
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, "", node.lineno) if sub in modules else (base, alias.name, node.lineno))
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for target, imported, line in _imports(name, path, modules):
            while target not in modules and "." in target:  # `import mlm_lightning.x.y` of a name in x
                target = target.rsplit(".", 1)[0]
            if target != name and target != PACKAGE:  # the package's lazy __init__ is no dependency
                graph[name].add(target)
            if imported.startswith("_") and not imported.startswith("__") and target != name:
                private.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{imported}")
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    assert graph, "no modules found"
    cycles = _cycles(graph)
    shown = [" -> ".join(g) + "  (each imports another of the group, function-level imports included)" for g in cycles]
    assert not cycles, "import cycles in the package:\n" + "\n".join(shown)


# Imports of another module's private names that are allowed (none: make the name public instead).
KNOWN_PRIVATE: set[str] = set()


def test_no_private_names_across_modules() -> None:
    _, private = _graph()
    unknown = [line for line in private if line.rsplit(" ", 1)[1] not in KNOWN_PRIVATE]
    assert not unknown, "a module imports another module's private name:\n" + "\n".join(unknown)
    gone = KNOWN_PRIVATE - {line.rsplit(" ", 1)[1] for line in private}
    assert not gone, f"no longer imported, remove from KNOWN_PRIVATE: {sorted(gone)}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
