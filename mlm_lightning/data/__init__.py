"""Text in, masked batches out: the data side of training, one job per module.

* :mod:`.reading`: file types and how they are read into documents (add an input format here);
* :mod:`.token_stream`: tokenization into one flat token stream per split;
* :mod:`.cache`: the tokenization cache, its key and its integrity checks;
* :mod:`.rows`: rows of the ``packed`` and ``line_by_line`` layouts over a token stream;
* :mod:`.sampling`: the shuffled, sharded, resumable order of rows;
* :mod:`.shards`: shard sets in folders or object stores (``python -m mlm_lightning shard``), their manifests;
* :mod:`.streaming`: training rows streamed from weighted shard sets (``data.streaming``), resumable;
* :mod:`.masking`: masking strategies (``data.masking``); :mod:`.collator`: the collator they build;
* :mod:`.datamodule`: ``MLMDataModule``, the settings and Lightning's hooks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlm_lightning.data.cache import CACHE_VERSION, CorpusCache, tokenizer_fingerprint
    from mlm_lightning.data.datamodule import MLMDataModule
    from mlm_lightning.data.reading import load_documents
    from mlm_lightning.data.rows import TokenRows
    from mlm_lightning.data.sampling import MLMSampler, ResumableDataLoader
    from mlm_lightning.data.streaming import ShardSet, StreamingRows

# Loaded on first use: a dataloader worker unpickling the collator (``mlm_lightning.data.collator``) imports this
# package, and needs neither Lightning nor ``datasets``.
_LAZY = {
    "CACHE_VERSION": "mlm_lightning.data.cache",
    "CorpusCache": "mlm_lightning.data.cache",
    "tokenizer_fingerprint": "mlm_lightning.data.cache",
    "MLMDataModule": "mlm_lightning.data.datamodule",
    "load_documents": "mlm_lightning.data.reading",
    "TokenRows": "mlm_lightning.data.rows",
    "MLMSampler": "mlm_lightning.data.sampling",
    "ResumableDataLoader": "mlm_lightning.data.sampling",
    "ShardSet": "mlm_lightning.data.streaming",
    "StreamingRows": "mlm_lightning.data.streaming",
}

__all__ = [
    "CACHE_VERSION",
    "CorpusCache",
    "MLMDataModule",
    "MLMSampler",
    "ResumableDataLoader",
    "ShardSet",
    "StreamingRows",
    "TokenRows",
    "load_documents",
    "tokenizer_fingerprint",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
