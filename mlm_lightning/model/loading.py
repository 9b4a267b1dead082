"""The one place a tokenizer, a masked LM or a model config is loaded by name: training, export, fill-mask, inspect.

Every loader takes a hub name, a local folder (``~`` allowed) or a ``pkg://package/path``, and turns a failure
(no network for a hub name, a missing folder, a folder of something else) into one :class:`MLMError` line that
names what was asked for and says what works offline. No loader runs a folder's own code: ``trust_remote_code`` is
always ``False``, so a config's ``auto_map`` is refused at once (transformers would otherwise ask at a terminal).
"""

from __future__ import annotations

import sys
from typing import Any

from mlm_lightning.errors import MLMError, first_line
from mlm_lightning.io.sources import local_source
from mlm_lightning.model.base_head import BaseHead, apply_base_head

OFFLINE_MODEL_HINT = "a local folder (a `save_pretrained` or `export` output) or a pkg:// path instead of a hub name"


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
            (:mod:`mlm_lightning.model.base_head`); ``none``: it starts random.

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
                local_source(name_or_path),
                output_loading_info=True,
                trust_remote_code=False,
                **(config_overrides or {}),
            )
    except (OSError, ValueError) as err:  # ValueError: not a valid hub name, or not a masked-LM config
        raise MLMError(
            f"could not load model '{name_or_path}': {first_line(err)}. Without network access, pass {hint}."
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
        return AutoConfig.from_pretrained(local_source(name_or_path), trust_remote_code=False).to_dict()
    except (OSError, ValueError) as err:
        raise MLMError(
            f"could not load the config of model '{name_or_path}': {first_line(err)}. Without network access, "
            f"pass {OFFLINE_MODEL_HINT}."
        ) from err
