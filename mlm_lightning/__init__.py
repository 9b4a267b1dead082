"""mlm-lightning: masked-language-model training for BERT-family encoders on PyTorch Lightning."""

from mlm_lightning.data import MLMDataModule
from mlm_lightning.errors import MLMError
from mlm_lightning.masking import MLMCollator
from mlm_lightning.module import MLMModule

__all__ = ["MLMCollator", "MLMDataModule", "MLMError", "MLMModule"]
__version__ = "0.1.0"
