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


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package under ``root`` by dotted name (packages by their ``__init__``)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
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


# ------------------------------------------------------------------------------------------------------ layering
# The packages from the bottom up (docs/layout.md): a module imports only from its own layer or a lower one. The
# top-level modules (errors, settings, quiet, private_api, interrupts, families, moved) are the core, at the bottom;
# the package's own __init__ re-exports the public classes (lazily) and so stands at the top, with __main__.
LAYERS = ("core", "io", "data", "training", "model", "tools", "callbacks", "cli", "__main__")


def _layer(module: str) -> int:
    """The layer of a dotted module name of the package (``mlm_lightning.data.cache`` -> data's)."""
    parts = module.split(".")
    if len(parts) == 1:  # the package __init__
        return len(LAYERS) - 1
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else 0


def layering_violations(root: Path = ROOT) -> list[str]:
    """Every import (module level or inside a function, ``import`` or ``from``) of a higher layer's module."""
    modules = _modules(root)
    found = []
    for name, path in modules.items():
        for target, _, line in _imports(name, path, modules):
            while target not in modules and "." in target:  # `from mlm_lightning.x import name`
                target = target.rsplit(".", 1)[0]
            if target != PACKAGE and _layer(target) > _layer(name):
                found.append(
                    f"{path.relative_to(root)}:{line} imports {target} "
                    f"({LAYERS[_layer(name)]} must not import {LAYERS[_layer(target)]})"
                )
    return found


def test_no_import_from_a_higher_layer() -> None:
    assert len(_modules()) > 30, "no modules found"
    violations = layering_violations()
    assert not violations, f"imports against the direction {' -> '.join(LAYERS)}:\n" + "\n".join(violations)


@pytest.mark.parametrize(("lower", "higher"), [("data", "model"), ("tools", "cli")])
def test_named_breaks_stay_fixed(lower: str, higher: str) -> None:
    """The two breaks issue 21 named: data importing a model module, a tool standing on the command line."""
    assert LAYERS.index(lower) < LAYERS.index(higher)
    modules = _modules()
    for name, path in modules.items():
        if _layer(name) == LAYERS.index(lower):
            targets = {t for t, _, _ in _imports(name, path, modules)}
            assert not [t for t in targets if t.startswith(f"{PACKAGE}.{higher}.") or t == f"{PACKAGE}.{higher}"]


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_layering_check_finds_upward_imports(tmp_path: Path) -> None:
    """A package with the two old breaks (one at module level, one inside a function, one relative) fails."""
    root = _fake_package(
        tmp_path,
        {
            "__init__.py": "from mlm_lightning import errors\n",
            "errors.py": "",
            "data/__init__.py": "",
            "data/datamodule.py": "from mlm_lightning.model.loading import load_tokenizer\nfrom .. import errors\n",
            "model/__init__.py": "",
            "model/loading.py": "from mlm_lightning.data import datamodule\n",
            "tools/__init__.py": "",
            "tools/evaluate.py": "def run():\n    from ..cli import lightning_cli\n    import mlm_lightning.cli\n",
            "cli/__init__.py": "",
            "cli/lightning_cli.py": "import mlm_lightning.tools.evaluate\n",
        },
    )
    found = layering_violations(root)
    assert [line.split(" (")[0] for line in found] == [
        "mlm_lightning/data/datamodule.py:1 imports mlm_lightning.model.loading",
        "mlm_lightning/tools/evaluate.py:2 imports mlm_lightning.cli.lightning_cli",
        "mlm_lightning/tools/evaluate.py:3 imports mlm_lightning.cli",
    ]


def test_modules_and_the_lightning_module_stay_small() -> None:
    """Issue 21: no module over 400 lines; ``MLMModule`` (the class) at most 250, its other jobs in their own files."""
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines (split them by job): {long}"
    tree = ast.parse((ROOT / PACKAGE / "model" / "module.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MLMModule"]
    lines = (cls.end_lineno or cls.lineno) - cls.lineno + 1
    assert lines <= 250, f"MLMModule is {lines} lines: move a job into its own module (docs/layout.md)"
