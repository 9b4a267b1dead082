"""Every private library name in ``mlm_lightning.private_api`` still exists, with the signature the package uses.

An upgrade of Lightning, transformers, datasets, jsonargparse or torch that renames or reshapes one fails here, by
name, rather than somewhere inside a run. The uses are found in the package's source (``private_uses``): one missing
from the list fails, and so does a listed name no longer used.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mlm_lightning.private_api import PRIVATE_NAMES

ROOT = Path(__file__).parents[1]


def _owner(dotted: str) -> tuple[object, str]:
    """The object holding the last attribute of ``dotted`` (imported module, then attributes), and its name."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:-1]:
            obj = getattr(obj, attr)
        return obj, parts[-1]
    raise AssertionError(f"cannot import any prefix of {dotted}")


def _params(func: Callable) -> list[str]:
    return list(inspect.signature(func).parameters)


def _in_init(cls: type, attribute: str) -> bool:
    """Whether ``cls.__init__`` sets ``self.<attribute>`` (instance attributes are not on the class)."""
    return re.search(rf"self\.{re.escape(attribute)}\s*(:[^=\n]*)?=", inspect.getsource(cls.__init__)) is not None


def _check_restricted_number() -> None:
    from jsonargparse.typing import PositiveInt, restricted_number_type

    kind = restricted_number_type("MLMCheckType", int, (">=", 7))
    assert (kind._expression, kind._type) == ("v>=7", int)
    assert (PositiveInt._expression, PositiveInt._type) == ("v>0", int)


def _check_fast_tokenizer(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tok.backend_tokenizer is tok._tokenizer  # the public getter reads the attribute the copy replaces


def _check_dataset_indices() -> None:
    from datasets import Dataset

    ds = Dataset.from_dict({"a": [1, 2, 3]})
    assert ds._indices is None and ds.select([2, 0])._indices is not None


def _check_no_split_modules() -> None:
    from transformers import BertConfig, BertForMaskedLM, PreTrainedModel

    assert hasattr(PreTrainedModel, "_no_split_modules")
    model = BertForMaskedLM(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))
    assert "BertLayer" in model._no_split_modules


def _check_received_sigterm() -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    assert _in_init(_SignalConnector, "received_sigterm")
    source = inspect.getsource(Trainer.received_sigterm.fget)
    assert "self._signal_connector.received_sigterm" in source, "Trainer.received_sigterm reads another flag now"


def _check_module_trainer() -> None:
    import lightning as L

    module = L.LightningModule()
    assert module._trainer is None
    with pytest.raises(RuntimeError):  # why the package reads _trainer: the public property raises
        module.trainer  # noqa: B018


# name -> a check beyond "it exists": the signature the package relies on, or the behaviour it relies on. Names
# not here are checked to exist (on the class, as a dataclass field, or set in the class's __init__).
CHECKS: dict[str, Callable[..., None]] = {
    "lightning.pytorch.cli._InstantiatorFn": lambda obj: (
        _params(obj.__init__) == ["self", "cli", "key"]
        and "applied_instantiation_links" in _params(obj.__call__)
        or pytest.fail(f"_InstantiatorFn: {_params(obj.__init__)} / {_params(obj.__call__)}")
    ),
    "lightning.pytorch.cli.LightningCLI._instantiate_trainer": lambda obj: (
        _params(obj) == ["self", "config", "callbacks"] or pytest.fail(_params(obj))
    ),
    "lightning.pytorch.cli.LightningCLI._parse_ckpt_path": lambda obj: _params(obj) == ["self"] or pytest.fail(),
    "lightning.pytorch.callbacks.ModelCheckpoint._should_skip_saving_checkpoint": lambda obj: (
        _params(obj) == ["self", "trainer"] or pytest.fail(_params(obj))
    ),
    "lightning.pytorch.callbacks.ModelCheckpoint._monitor_candidates": lambda obj: (
        _params(obj) == ["self", "trainer"] or pytest.fail(_params(obj))
    ),
    "lightning.pytorch.callbacks.ModelCheckpoint._should_remove_checkpoint": lambda obj: (
        _params(obj) == ["self", "trainer", "previous", "current"] or pytest.fail(_params(obj))
    ),
    "lightning.pytorch.callbacks.ModelCheckpoint._remove_checkpoint": lambda obj: (
        _params(obj) == ["self", "trainer", "filepath"] or pytest.fail(_params(obj))
    ),
    "lightning.pytorch.callbacks.ModelCheckpoint._link_checkpoint": lambda obj: (
        _params(obj) == ["trainer", "filepath", "linkpath"] or pytest.fail(_params(obj))
    ),
    "lightning.pytorch.loops.evaluation_loop._EvaluationLoop.run": lambda obj: callable(obj) or pytest.fail(),
    "torch._dynamo": lambda obj: callable(getattr(obj, "maybe_mark_dynamic", None)) or pytest.fail(),
}


def test_the_list_and_the_checks_agree() -> None:
    names = [p.name for p in PRIVATE_NAMES]
    assert len(names) == len(set(names)), "a name listed twice"
    assert set(CHECKS) <= set(names), f"checks of unlisted names: {set(CHECKS) - set(names)}"
    assert all(p.used_in and p.why for p in PRIVATE_NAMES)


@pytest.mark.parametrize("name", [p.name for p in PRIVATE_NAMES])
def test_private_name_still_exists(name: str, tokenizer_dir: Path) -> None:
    special: dict[str, Callable[[], None]] = {
        "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector.received_sigterm": (
            _check_received_sigterm
        ),
        "lightning.pytorch.LightningModule._trainer": _check_module_trainer,
        "jsonargparse.typing.restricted_number_type._expression": _check_restricted_number,
        "jsonargparse.typing.restricted_number_type._type": _check_restricted_number,
        "transformers.PreTrainedTokenizerFast._tokenizer": lambda: _check_fast_tokenizer(tokenizer_dir),
        "datasets.Dataset._indices": _check_dataset_indices,
        "transformers.PreTrainedModel._no_split_modules": _check_no_split_modules,
    }
    if name in special:
        special[name]()
        return
    owner, attr = _owner(name)
    fields = getattr(owner, "__dataclass_fields__", {})
    exists = hasattr(owner, attr) or attr in fields or (isinstance(owner, type) and _in_init(owner, attr))
    assert exists, f"{name} is gone: see mlm_lightning/private_api.py for where it is used and why"
    if name in CHECKS:
        obj = inspect.getattr_static(owner, attr)
        CHECKS[name](obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj)


# ------------------------------------------------------------------------------------------- finding the uses
# Leading-underscore names that are documented API (namedtuple's methods, os._exit).
DOCUMENTED = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults", "_exit"})
PACKAGE = ROOT / "mlm_lightning"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _chain(node: ast.expr) -> tuple[ast.expr, list[str]]:
    """The root of ``a.b.c`` and its attribute names: ``(a, ["b", "c"])``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return node, parts[::-1]


def _is_self(node: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: the attribute is looked up on the class the code is in."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


@functools.cache
def _source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return ""


def _foreign_owner(cls: type, name: str, own_package: str) -> type | None:
    """The first base of ``cls`` from another library that defines ``name`` (on the class or in its methods)."""
    for base in cls.__mro__[1:]:
        if base is object or base.__module__.split(".")[0] == own_package:
            continue
        if name in vars(base) or re.search(rf"self\.{re.escape(name)}\b", _source(base)):
            return base
    return None


def _own_names(trees: dict[str, ast.Module]) -> set[str]:
    """The private names the package defines itself: functions, classes, module variables, ``self.x =``."""
    own = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        own.add(target.id)
                    elif isinstance(target, ast.Attribute) and _is_self(target.value):
                        own.add(target.attr)
    return {name for name in own if _private(name)}


def _aliases(function: ast.AST) -> dict[str, list[str]]:
    """``loop = trainer.fit_loop.epoch_loop`` in a function: ``{"loop": ["trainer", "fit_loop", "epoch_loop"]}``."""
    found = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            root, parts = _chain(node.value)
            if parts and isinstance(root, ast.Name):
                found[node.targets[0].id] = [root.id, *parts]
    return found


def _loop_uses(chain: list[str], trainer: object, gateways: set[str]) -> list[str]:
    """``Owner.attribute`` for each step of ``chain`` taken on an object of a private class, walked on a Trainer.

    The loops (``trainer.fit_loop``: ``_FitLoop``, its ``_TrainingEpochLoop``, ``_EvaluationLoop``, their
    progress trackers) and the connectors are private classes behind public or private Trainer attributes: each
    attribute read on them is a private name, though its own name has no underscore.
    """
    start = next((i for i, part in enumerate(chain) if part in gateways), None)
    if start is None:
        return []
    found = [f"Trainer.{chain[start]}"] if _private(chain[start]) else []
    obj = getattr(trainer, chain[start])
    for part in chain[start + 1 :]:
        owner = type(obj)
        if owner.__name__.startswith("_"):
            found.append(f"{owner.__module__}.{owner.__qualname__}.{part}")
        obj = getattr(obj, part, _GONE)
        if obj is _GONE:
            found.append(f"{owner.__module__}.{owner.__qualname__}.{part} (gone)")
            break
    return found


_GONE = object()


def _trainer() -> object:
    from lightning.pytorch import Trainer

    return Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def private_uses(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Every private name of another library used in ``package``: the name (as precise as known) -> where.

    Found in the source: ``from lib import _x`` and ``import lib._mod``; ``obj._x`` and ``getattr(obj, "_x")`` for
    a name the package does not define; ``self._x``, ``super()._x`` and ``def _x`` in a class whose base from
    another library defines ``_x`` (reads and overrides); attribute chains through the Trainer's loops and
    connectors, walked on a real Trainer.
    """
    root = package.parent
    trees = {str(p.relative_to(root)): ast.parse(p.read_text(), str(p)) for p in sorted(package.rglob("*.py"))}
    own = _own_names(trees)
    trainer = _trainer()
    gateways = {name for name, value in vars(trainer).items() if type(value).__name__.startswith("_")}
    uses: dict[str, list[str]] = {}

    def add(name: str, file: str, node: ast.AST) -> None:
        uses.setdefault(name, []).append(f"{file}:{node.lineno}")

    for file, tree in trees.items():
        dotted = file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module.split(".")[0] != package.name:
                if any(_private(part) for part in node.module.split(".")):
                    add(node.module, file, node)
                for alias in node.names:
                    if _private(alias.name):
                        add(f"{node.module}.{alias.name}", file, node)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if any(_private(part) for part in alias.name.split(".")):
                        add(alias.name, file, node)
            elif isinstance(node, ast.Attribute) and _private(node.attr) and not _is_self(node.value):
                if node.attr not in own and node.attr not in DOCUMENTED:
                    add(node.attr, file, node)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) > 1:
                name = node.args[1].value if isinstance(node.args[1], ast.Constant) else None
                attr_call = node.func.id in ("getattr", "hasattr", "setattr", "delattr")
                if attr_call and isinstance(name, str) and _private(name) and name not in own:
                    add(name, file, node)
        for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            aliases = _aliases(function)
            inner = {id(n.value) for n in ast.walk(function) if isinstance(n, ast.Attribute)}
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and id(node) not in inner:
                    base, parts = _chain(node)
                    head = aliases.get(base.id, [base.id]) if isinstance(base, ast.Name) else []
                    for name in _loop_uses([*head, *parts], trainer, gateways):
                        add(name, file, node)
        module = importlib.import_module(dotted)
        for class_node in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            cls = getattr(module, class_node.name, None)
            if not isinstance(cls, type):
                continue
            for node in ast.walk(class_node):
                if node in class_node.body and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = node.name
                elif isinstance(node, ast.Attribute) and _is_self(node.value):
                    name = node.attr
                else:
                    continue
                owner = _foreign_owner(cls, name, package.name) if _private(name) else None
                if owner is not None:
                    add(f"{owner.__qualname__}.{name}", file, node)
    return {name: sorted(set(where)) for name, where in uses.items()}


def _listed(use: str) -> bool:
    """Whether a use is in the registry: the same name, or the registry's full name ends with it."""
    return any(p.name == use or p.name.endswith(f".{use}") for p in PRIVATE_NAMES)


@pytest.fixture(scope="module")
def uses() -> dict[str, list[str]]:
    return private_uses()


def test_every_private_name_used_is_listed(uses: dict[str, list[str]]) -> None:
    missing = [f"{name}  (at {', '.join(where)})" for name, where in sorted(uses.items()) if not _listed(name)]
    assert not missing, "private names missing from mlm_lightning/private_api.py:\n" + "\n".join(missing)


def test_every_listed_name_is_still_used(uses: dict[str, list[str]]) -> None:
    stale = [p.name for p in PRIVATE_NAMES if not any(p.name == u or p.name.endswith(f".{u}") for u in uses)]
    assert not stale, f"no longer used, remove from mlm_lightning/private_api.py: {stale}"


def test_the_finder_finds_every_kind_of_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package with one use of each kind: each is found, the package's own private names are not."""
    package = tmp_path / "h4fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "uses.py").write_text(
        "import lightning.pytorch.utilities._pytree\n"
        "import torch._dynamo\n"
        "from lightning.pytorch.cli import LightningCLI, _InstantiatorFn\n\n"
        "_OWN = 1\n\n\n"
        "class CLI(LightningCLI):\n"
        "    def _instantiate_trainer(self, config, callbacks):\n"
        "        self._own = _OWN\n"
        "        return super()._instantiate_trainer(config, callbacks)\n\n\n"
        "def steps(trainer, schedule):\n"
        "    loop = trainer.fit_loop.epoch_loop\n"
        "    schedule._last_lr = [1.0]\n"
        "    trainer._signal_connector.received_sigterm = getattr(trainer, '_own', True)\n"
        "    return loop.batch_progress.is_last_batch\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = set(private_uses(package))
    assert found == {
        "lightning.pytorch.utilities._pytree",
        "torch._dynamo",
        "lightning.pytorch.cli._InstantiatorFn",
        "LightningCLI._instantiate_trainer",
        "_last_lr",
        "_signal_connector",
        "Trainer._signal_connector",
        "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector.received_sigterm",
        "lightning.pytorch.loops.fit_loop._FitLoop.epoch_loop",
        "lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop.batch_progress",
        "lightning.pytorch.loops.progress._BatchProgress.is_last_batch",
    }
