"""What defines the data a run trains on: recorded in every checkpoint, compared when a run resumes.

The training files' content digests (not their paths: a moved file is the same data), the tokenizer's fingerprint
(its vocabulary and rules, not its name), the text layout, the row layout, the sequence length, the masking strategy
and, for a held-out validation share, what decides which documents are held out.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from mlm_lightning.data.cache import Corpus, tokenizer_fingerprint
from mlm_lightning.data.checks import masking_config
from mlm_lightning.data.masking import MaskingStrategy
from mlm_lightning.errors import MLMError
from mlm_lightning.moved import current_path


def data_identity(
    train: Corpus | None,
    digests: dict[str, str],
    tokenizer_name: str | None,
    tokenizer: Any,
    text_layout: str,
    layout: str,
    max_seq_length: int,
    masking: MaskingStrategy,
) -> dict[str, Any]:
    """The identity record, by setting, of a run training on ``train`` (its files hashed into ``digests``)."""
    identity: dict[str, Any] = {
        "data.train_files": [[str(f), digests.get(str(f), "")] for f in train.files] if train else [],
        "data.tokenizer": [tokenizer_name or "", tokenizer_fingerprint(tokenizer)],
        "data.text_layout": text_layout,
        "data.layout": layout,
        "data.max_seq_length": max_seq_length,
        "data.masking": masking_config(masking),
    }
    if train is not None and train.split:
        identity["data.val_fraction"] = train.split.get("val_fraction")
        identity["data.seed"] = train.split.get("split_seed")
    return identity


def data_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two :func:`data_identity` records, in words (empty: the same data)."""
    changes = []
    for key, old in saved.items():
        new = current.get(key)
        if key == "data.train_files":
            old_files, new_files = dict(map(tuple, old)), dict(map(tuple, new or []))
            kept, had = set(new_files.values()), set(old_files.values())
            if sorted(old_files.values()) == sorted(new_files.values()):
                continue  # the same content (files moved or renamed)
            what = [f"{f} changed" for f in old_files if f in new_files and old_files[f] != new_files[f]]
            what += [f"{f} left out" for f, d in old_files.items() if f not in new_files and d not in kept]
            what += [f"{f} added" for f, d in new_files.items() if f not in old_files and d not in had]
            changes.append(f"data.train_files: {', '.join(what) or 'their content changed'}")
        elif key == "data.tokenizer":
            new = new or ["", ""]  # a record without it: no tokenizer
            if old[1] != new[1]:
                changes.append(f"data.tokenizer: {old[0]} -> {new[0]} (another vocabulary or other rules)")
        elif _current(old) != _current(new):
            changes.append(f"{key}: {old} -> {new}")
    return changes


def _current(value: Any) -> Any:
    """``value`` with the class paths of moved modules (checkpoints written before the layout by job) made current."""
    if isinstance(value, dict) and isinstance(value.get("class_path"), str):
        return {**value, "class_path": current_path(value["class_path"])}
    return value


def check_resume(saved: dict[str, Any], current: dict[str, Any], checkpoint: str, allow_changes: bool) -> bool:
    """Whether a resume of ``checkpoint`` (identity ``saved``) continues on other data, allowed: then one warning.

    Raises:
        MLMError: Naming each change, unless ``allow_changes`` (``data.resume_with_changed_data``).
    """
    changes = data_changes(saved, current)
    if not changes:
        return False
    if not allow_changes:
        raise MLMError(
            f"the data differ from those {checkpoint} was trained on: {'; '.join(changes)}. Resume with the "
            f"same data, or set data.resume_with_changed_data=true to continue on these on purpose"
        )
    rank_zero_warn(
        f"resuming {checkpoint} on other data (data.resume_with_changed_data): {'; '.join(changes)}. The "
        f"new training data are read from the start of an epoch"
    )
    return True
