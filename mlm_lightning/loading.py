"""The one place a tokenizer, a masked LM or a model config is loaded by name: training, export, fill-mask, inspect.

Every loader takes a hub name, a local folder (``~`` allowed) or a ``pkg://package/path``, and turns a failure
(no network for a hub name, a missing folder, a folder of something else) into one :class:`MLMError` line that
names what was asked for and says what works offline. No loader runs a folder's own code: ``trust_remote_code`` is
always ``False``, so a config's ``auto_map`` is refused at once (transformers would otherwise ask at a terminal).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mlm_lightning.base_head import BaseHead, apply_base_head
from mlm_lightning.errors import MLMError
from mlm_lightning.sources import resolve_pkg

OFFLINE_MODEL_HINT = "a local folder (a `save_pretrained` or `export` output) or a pkg:// path instead of a hub name"


def _source(name_or_path: str) -> str:
    """What ``from_pretrained`` gets: ``pkg://`` resolved and ``~`` expanded (a hub name passes unchanged)."""
    return os.path.expanduser(resolve_pkg(name_or_path))


def _first_line(err: BaseException) -> str:
    """The first line of a library's error: transformers' offline message runs over several lines and a URL."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


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
        tok = AutoTokenizer.from_pretrained(_source(name_or_path), trust_remote_code=False)
    except (OSError, ValueError) as err:  # ValueError: not a valid hub name either
        raise MLMError(
            f"could not load tokenizer '{name_or_path}': {_first_line(err)}. Offline, pass a local folder as "
            f"{setting} (for example one written by `export` or `train-tokenizer`) or a pkg:// path."
        ) from err
    if tok.mask_token_id is None or tok.pad_token_id is None:
        raise MLMError(f"tokenizer '{name_or_path}' has no [MASK] or [PAD] token, so it cannot do MLM")
    return tok


def load_masked_lm(
    name_or_path: str,
    for_training: bool = False,
    hint: str = OFFLINE_MODEL_HINT,
    config_overrides: dict[str, Any] | None = None,
    base_head: BaseHead = "auto",
) -> Any:
    """An ``AutoModelForMaskedLM`` from a hub name, a local folder or a ``pkg://`` path.

    Args:
        name_or_path: Hub name, local folder or ``pkg://`` path.
        for_training: Return it in train mode (``from_pretrained`` returns eval mode, which would silently switch
            dropout off in training) and without transformers' note that the MLM head was newly initialised
            (expected when training from an encoder-only checkpoint). Otherwise eval mode, and one warning line
            when weights are missing: predictions of a random head are worthless.
        hint: What to pass instead, in the error message.
        config_overrides: Config values that replace the pretrained model's (e.g. its dropout).
        base_head: ``auto``: a missing MLM head of the packaged MiniLM starts from the one shipped with the package
            (:mod:`mlm_lightning.base_head`); ``none``: it starts random.

    Raises:
        MLMError: It cannot be loaded.
    """
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    from mlm_lightning.quiet import no_transformers_progress

    # transformers' own load report is a table of every missing key and a progress bar: one line says it instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with no_transformers_progress():
            model, info = AutoModelForMaskedLM.from_pretrained(
                _source(name_or_path), output_loading_info=True, trust_remote_code=False, **(config_overrides or {})
            )
    except (OSError, ValueError) as err:  # ValueError: not a valid hub name, or not a masked-LM config
        raise MLMError(
            f"could not load model '{name_or_path}': {_first_line(err)}. Without network access, pass {hint}."
        ) from err
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = apply_base_head(model, sorted(info.get("missing_keys") or []), name_or_path, base_head)
    if missing and not for_training:
        print(
            f"warning: model '{name_or_path}' has no weights for {len(missing)} parameters ({missing[0]}, ...): "
            "they start random (an encoder without its MLM head?), so its predictions mean little until trained",
            file=sys.stderr,
        )
    return model.train(for_training)


def load_model_config(name_or_path: str) -> dict[str, Any]:
    """The ``config.json`` of a pretrained model as a dict.

    Raises:
        MLMError: It cannot be loaded.
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(_source(name_or_path), trust_remote_code=False).to_dict()
    except (OSError, ValueError) as err:
        raise MLMError(
            f"could not load the config of model '{name_or_path}': {_first_line(err)}. Without network access, "
            f"pass {OFFLINE_MODEL_HINT}."
        ) from err


# Files of a saved tokenizer (fast, WordPiece, byte-level BPE, SentencePiece): a model folder with one ships its own.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spm.model")


def same_source(a: str, b: str) -> bool:
    """Whether two names or paths point at the same place (``pkg://`` resolved, ``~`` expanded, links followed)."""
    a, b = _source(a), _source(b)
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def bundled_tokenizer(model_name_or_path: str) -> Any | None:
    """The tokenizer saved in a local model folder beside the weights, or ``None`` (a hub name, or no tokenizer)."""
    from transformers import AutoTokenizer

    folder = _source(model_name_or_path)
    if not os.path.isdir(folder) or not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError):  # a broken tokenizer beside the weights: the configured one is checked alone
        return None
