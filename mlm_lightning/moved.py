"""Module paths from before the layout by job, still importable.

Checkpoints and saved configs store class paths (``mlm_lightning.masking.TokenMasking``,
``mlm_lightning.module.MLMModule``, ...), and users' scripts import the old modules. Each old name below is an alias
of the module that holds its code now: importing it gives that very module object (one class, one identity, so
``isinstance`` and jsonargparse's class-path checks hold). tests/test_compat.py loads a checkpoint and a config
written before the move.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

# old module -> new module (issue 21's layout; docs/layout.md)
MOVED: dict[str, str] = {
    "mlm_lightning.atomic": "mlm_lightning.io.atomic",
    "mlm_lightning.checkpoint_io": "mlm_lightning.io.checkpoint_io",
    "mlm_lightning.run_folder": "mlm_lightning.io.run_folder",
    "mlm_lightning.sources": "mlm_lightning.io.sources",
    "mlm_lightning.masking": "mlm_lightning.data.masking",
    "mlm_lightning.tokenizer": "mlm_lightning.tools.train_tokenizer",
    "mlm_lightning.module": "mlm_lightning.model.module",
    "mlm_lightning.loading": "mlm_lightning.model.loading",
    "mlm_lightning.tokenizer_match": "mlm_lightning.model.tokenizer_match",
    "mlm_lightning.sharding": "mlm_lightning.model.sharding",
    "mlm_lightning.compilation": "mlm_lightning.model.compilation",
    "mlm_lightning.precision": "mlm_lightning.training.precision",
    "mlm_lightning.flops": "mlm_lightning.training.flops",
    "mlm_lightning.last_checkpoint": "mlm_lightning.callbacks.checkpoint",
    "mlm_lightning.nonfinite": "mlm_lightning.callbacks.nonfinite",
    "mlm_lightning.random_states": "mlm_lightning.callbacks.random_states",
    "mlm_lightning.console": "mlm_lightning.callbacks.console",
    "mlm_lightning.allocator": "mlm_lightning.callbacks.memory",
    "mlm_lightning.export": "mlm_lightning.tools.export",
    "mlm_lightning.fill_mask": "mlm_lightning.tools.fill_mask",
    "mlm_lightning.evaluate": "mlm_lightning.tools.evaluate",
    "mlm_lightning.extend_vocab": "mlm_lightning.tools.extend_vocab",
    "mlm_lightning.report": "mlm_lightning.tools.report",
    "mlm_lightning.probe": "mlm_lightning.tools.probe",
    "mlm_lightning.probe_tasks": "mlm_lightning.tools.probe_tasks",
    "mlm_lightning.probe_command": "mlm_lightning.cli.probe",
    "mlm_lightning.inspect_command": "mlm_lightning.cli.inspect",
    "mlm_lightning.shard_command": "mlm_lightning.cli.shard",
}

# Old modules whose names went to several new ones: the first new module above, then these, are searched for a name.
ALSO: dict[str, tuple[str, ...]] = {
    "mlm_lightning.probe": ("mlm_lightning.callbacks.probe",),
    "mlm_lightning.tokenizer": ("mlm_lightning.data.tokenizer",),
    "mlm_lightning.loading": ("mlm_lightning.data.tokenizer",),
    "mlm_lightning.evaluate": ("mlm_lightning.cli.evaluate",),
}


class _Union(ModuleType):
    """An old module whose names now live in several modules: each name is looked up in them, in order."""

    def __init__(self, name: str, homes: tuple[str, ...]) -> None:
        super().__init__(name, f"moved to {', '.join(homes)}")
        self._homes = homes

    def __getattr__(self, attr: str) -> object:
        for home in self._homes:
            module = importlib.import_module(home)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._homes)}) has no attribute {attr!r}")


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the new module (the same object in ``sys.modules``)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if spec.name in ALSO:
            return _Union(spec.name, (MOVED[spec.name], *ALSO[spec.name]))
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module ran when it was imported


def install() -> None:
    """Puts the alias finder on ``sys.meta_path`` once (``import mlm_lightning`` does it)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        # First: it answers only the old names, which a stale file (an older checkout an editable install points
        # at) must not shadow.
        sys.meta_path.insert(0, _Alias())


def current_path(dotted: str) -> str:
    """A module or class path with an old module replaced by its new one (``mlm_lightning.masking.TokenMasking``
    -> ``mlm_lightning.data.masking.TokenMasking``); other paths unchanged. Pure text: nothing is imported."""
    for old, new in MOVED.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old) :]
    return dotted
