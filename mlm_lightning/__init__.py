"""mlm-lightning: masked-language-model training for BERT-family encoders on PyTorch Lightning."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from mlm_lightning import moved
from mlm_lightning.errors import MLMError

if TYPE_CHECKING:
    from mlm_lightning.data import MLMDataModule
    from mlm_lightning.data.collator import MLMCollator
    from mlm_lightning.model.module import MLMModule

__all__ = ["MLMCollator", "MLMDataModule", "MLMError", "MLMModule"]
__version__ = "0.1.0"

# The public classes load on first use: `python -m mlm_lightning --help` and `fill-mask` need neither Lightning
# nor `datasets`, and importing them costs seconds.
_LAZY = {
    "MLMCollator": "mlm_lightning.data.collator",
    "MLMDataModule": "mlm_lightning.data",
    "MLMModule": "mlm_lightning.model.module",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# Like Lightning's own logger: progress messages (e.g. "tokenizing ...") show unless the application set up logging.
moved.install()  # old module paths (class paths in checkpoints and saved configs) still import

_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False
