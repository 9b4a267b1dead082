"""mlm-lightning: masked-language-model training for BERT-family encoders on PyTorch Lightning."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from mlm_lightning.errors import MLMError

if TYPE_CHECKING:
    from mlm_lightning.data import MLMDataModule
    from mlm_lightning.masking import MLMCollator
    from mlm_lightning.module import MLMModule

__all__ = ["MLMCollator", "MLMDataModule", "MLMError", "MLMModule"]
__version__ = "0.1.0"

# Imported on first use: `import mlm_lightning.module` must not pull in the data side (pyarrow, datasets), which
# a GPU box running only benchmarks/gpu.py may not have.
_LAZY = {"MLMCollator": "masking", "MLMDataModule": "data", "MLMModule": "module"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mlm_lightning.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mlm_lightning' has no attribute {name!r}")


# Like Lightning's own logger: progress messages (e.g. "tokenizing ...") show unless the application set up logging.
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False
