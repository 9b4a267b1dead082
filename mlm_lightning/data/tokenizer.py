"""Tokenizers, as the data side loads them: by name, folder or ``pkg://`` path, and what kind each is.

A tokenizer is loaded here for training, export, fill-mask, probe and inspect alike; a failure (no network for a hub
name, a missing folder, a folder of something else) is one :class:`MLMError` line that says what works offline.
No folder's own code runs (``trust_remote_code=False``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from mlm_lightning.errors import MLMError, first_line
from mlm_lightning.io.sources import local_source


def load_tokenizer(name_or_path: str, setting: str = "data.tokenizer") -> Any:
    """A fast tokenizer that can do MLM (it has a mask and a padding token).

    Args:
        name_or_path: Hub name, local folder or ``pkg://`` path.
        setting: The setting or flag the user gives the tokenizer with, named in the error.

    Raises:
        MLMError: It cannot be loaded (offline hub name, no such folder) or has no ``[MASK]``/``[PAD]`` token.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(local_source(name_or_path), trust_remote_code=False)
    except (OSError, ValueError) as err:  # ValueError: not a valid hub name either
        raise MLMError(
            f"could not load tokenizer '{name_or_path}': {first_line(err)}. Offline, pass a local folder as "
            f"{setting} (for example one written by `export` or `train-tokenizer`) or a pkg:// path."
        ) from err
    if tok.mask_token_id is None or tok.pad_token_id is None:
        raise MLMError(f"tokenizer '{name_or_path}' has no [MASK] or [PAD] token, so it cannot do MLM")
    return tok


# Files of a saved tokenizer (fast, WordPiece, byte-level BPE, SentencePiece): a model folder with one ships its own.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spm.model")


def same_source(a: str, b: str) -> bool:
    """Whether two names or paths point at the same place (``pkg://`` resolved, ``~`` expanded, links followed)."""
    a, b = local_source(a), local_source(b)
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def bundled_tokenizer(model_name_or_path: str) -> Any | None:
    """The tokenizer saved in a local model folder beside the weights, or ``None`` (a hub name, or no tokenizer)."""
    from transformers import AutoTokenizer

    folder = local_source(model_name_or_path)
    if not os.path.isdir(folder) or not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError):  # a broken tokenizer beside the weights: the configured one is checked alone
        return None


def tokenizer_family(tokenizer: Any) -> str:
    """The tokenizer's kind: ``WordPiece``, ``byte-level BPE``, ``SentencePiece``, or its backend model's type."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return f"slow (Python) {type(tokenizer).__name__}"
    model = type(backend.model).__name__
    pre_tokenizer = json.dumps(json.loads(backend.to_str()).get("pre_tokenizer"))
    if model == "BPE" and '"ByteLevel"' in pre_tokenizer:
        return "byte-level BPE"
    if model == "Unigram" or '"Metaspace"' in pre_tokenizer:
        return "SentencePiece"
    return model
