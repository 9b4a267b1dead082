"""Text in, masked batches out: the data side of training, one job per module.

* :mod:`.reading`: file types and how they are read into documents (add an input format here);
* :mod:`.token_stream`: tokenization into one flat token stream per split;
* :mod:`.cache`: the tokenization cache, its key and its integrity checks;
* :mod:`.rows`: rows of the ``packed`` and ``line_by_line`` layouts over a token stream;
* :mod:`.sampling`: the shuffled, sharded, resumable order of rows;
* :mod:`.shards`: shard sets in folders or object stores (``python -m mlm_lightning shard``), their manifests;
* :mod:`.streaming`: training rows streamed from weighted shard sets (``data.streaming``), resumable;
* :mod:`.datamodule`: ``MLMDataModule``, the settings and Lightning's hooks.

Masking strategies live in :mod:`mlm_lightning.data.masking`.
"""

from __future__ import annotations

from mlm_lightning.data.cache import CACHE_VERSION, CorpusCache, tokenizer_fingerprint
from mlm_lightning.data.datamodule import MLMDataModule
from mlm_lightning.data.reading import load_documents
from mlm_lightning.data.rows import TokenRows
from mlm_lightning.data.sampling import MLMSampler, ResumableDataLoader
from mlm_lightning.data.streaming import ShardSet, StreamingRows

# The name configs, saved configs and checkpoints' class paths use (and pickles resolve): the package's, not the file's.
MLMDataModule.__module__ = __name__

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
