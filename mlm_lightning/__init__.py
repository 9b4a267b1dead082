"""mlm-lightning: masked-language-model training for BERT-family encoders on PyTorch Lightning."""

import logging

from mlm_lightning.data import MLMDataModule
from mlm_lightning.errors import MLMError
from mlm_lightning.masking import MLMCollator
from mlm_lightning.module import MLMModule

__all__ = ["MLMCollator", "MLMDataModule", "MLMError", "MLMModule"]
__version__ = "0.1.0"

# Like Lightning's own logger: progress messages (e.g. "tokenizing ...") show unless the application set up logging.
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False
