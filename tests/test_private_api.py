"""Every private library name in ``mlm_lightning.private_api`` still exists, with the signature the package uses.

An upgrade of Lightning, transformers, datasets, jsonargparse or torch that renames or reshapes one fails here, by
name, rather than somewhere inside a run. A private name used in the package but missing from the list fails too.
"""

from __future__ import annotations

import ast
import importlib
import inspect
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
    return f"self.{attribute} =" in inspect.getsource(cls.__init__)


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


# name -> check; each either asserts on the name directly or gives the signature the package relies on.
CHECKS: dict[str, Callable[..., None]] = {
    "lightning.pytorch.cli._InstantiatorFn": lambda obj: (
        _params(obj.__init__) == ["self", "cli", "key"]
        and "applied_instantiation_links" in _params(obj.__call__)
        or pytest.fail(f"_InstantiatorFn: {_params(obj.__init__)} / {_params(obj.__call__)}")
    ),
    "lightning.pytorch.cli._get_module_type": lambda obj: _params(obj) == ["value"] or pytest.fail(_params(obj)),
    "lightning.pytorch.cli.LightningCLI._add_instantiators": lambda obj: _params(obj) == ["self"] or pytest.fail(),
    "lightning.pytorch.cli.LightningCLI._model_class": None,  # instance attribute: checked by _in_init below
    "lightning.pytorch.cli.LightningCLI._instantiate_trainer": lambda obj: (
        _params(obj) == ["self", "config", "callbacks"] or pytest.fail(_params(obj))
    ),
    "lightning.pytorch.cli.LightningCLI._parse_ckpt_path": lambda obj: _params(obj) == ["self"] or pytest.fail(),
    "lightning.pytorch.cli.LightningCLI._add_subcommands": lambda obj: (
        _params(obj) == ["self", "parser", "kwargs"] or pytest.fail(_params(obj))
    ),
    "lightning.pytorch.cli.LightningCLI._parser": lambda obj: (
        _params(obj) == ["self", "subcommand"] or pytest.fail(_params(obj))
    ),
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
    "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector.received_sigterm": None,
    "jsonargparse.typing.restricted_number_type._expression": None,
    "transformers.PreTrainedTokenizerFast._tokenizer": None,
    "datasets.Dataset._indices": None,
    "transformers.PreTrainedModel._no_split_modules": None,
    "torch._dynamo": lambda obj: callable(getattr(obj, "maybe_mark_dynamic", None)) or pytest.fail(),
}


def test_the_list_and_the_checks_agree() -> None:
    assert [p.name for p in PRIVATE_NAMES] == list(CHECKS)
    assert all(p.used_in and p.why for p in PRIVATE_NAMES)


@pytest.mark.parametrize("name", list(CHECKS))
def test_private_name_still_exists(name: str, tokenizer_dir: Path) -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    special: dict[str, Callable[[], None]] = {
        "lightning.pytorch.cli.LightningCLI._model_class": lambda: (
            _in_init(LightningCLI, "_model_class") and _in_init(LightningCLI, "_datamodule_class") or pytest.fail()
        ),
        "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector.received_sigterm": lambda: (
            _in_init(_SignalConnector, "received_sigterm")
            and "self._signal_connector.received_sigterm" in inspect.getsource(Trainer.received_sigterm.fget)
            or pytest.fail("Trainer.received_sigterm no longer reads _signal_connector.received_sigterm")
        ),
        "jsonargparse.typing.restricted_number_type._expression": _check_restricted_number,
        "transformers.PreTrainedTokenizerFast._tokenizer": lambda: _check_fast_tokenizer(tokenizer_dir),
        "datasets.Dataset._indices": _check_dataset_indices,
        "transformers.PreTrainedModel._no_split_modules": _check_no_split_modules,
    }
    if name in special:
        special[name]()
        return
    owner, attr = _owner(name)
    assert hasattr(owner, attr), f"{name} is gone: see mlm_lightning/private_api.py for where it is used and why"
    obj = inspect.getattr_static(owner, attr)
    CHECKS[name](obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj)


# Libraries whose private names count (the package's own are test_style's business).
LIBRARIES = ("lightning", "transformers", "datasets", "jsonargparse", "torch", "tokenizers", "torchmetrics")


def test_no_unlisted_private_names() -> None:
    """``from lib import _x`` and ``obj._x`` (on anything but self/cls) in the package are all in the list."""
    listed = {p.name.rsplit(".", 1)[1] for p in PRIVATE_NAMES} | {"_datamodule_class", "_signal_connector", "_type"}
    found = []
    for path in sorted((ROOT / "mlm_lightning").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Attribute) and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            ):
                names = [node.attr]
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} {n}"
                for n in names
                if n.startswith("_") and not n.startswith("__") and n not in listed
            ]
    assert not found, "private names missing from mlm_lightning/private_api.py:\n" + "\n".join(found)
