"""Checks of ``data.*`` values that span several settings (each range is its type's, checked by the parser), and the
masking strategy as a setting: built from its config, and written back as plain data."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from mlm_lightning.data.cache import Corpus
from mlm_lightning.data.collator import MLMCollator
from mlm_lightning.data.masking import MaskingStrategy, TokenMasking
from mlm_lightning.data.rows import TokenRows
from mlm_lightning.data.streaming import ShardSet
from mlm_lightning.errors import MLMError

VAL_SET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def masking_strategy(masking: MaskingStrategy | Mapping[str, Any]) -> MaskingStrategy:
    """The masking strategy: as given, or built from its config (``{class_path, init_args}``, or
    ``TokenMasking``'s settings alone), which is what ``config.data.as_dict()`` and saved hyperparameters hold."""
    if isinstance(masking, MaskingStrategy):
        return masking
    if "class_path" not in masking:
        return TokenMasking(**masking)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--masking", type=MaskingStrategy)
    return parser.instantiate(parser.parse_object({"masking": dict(masking)})).masking


def masking_config(masking: MaskingStrategy) -> dict[str, Any]:
    """A strategy as plain data, ``{class_path, init_args}``: what checkpoints and dashboards can hold."""
    cls = type(masking)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(vars(masking))}


def check_val_set_names(names: list[str]) -> None:
    """Raises :class:`MLMError` unless ``names`` can name validation sets (and their ``val/<name>/...`` tags)."""
    if not names:
        raise MLMError("data.val_files is an empty mapping: give at least one name, or a list of files")
    for name in names:
        if not VAL_SET_NAME.match(str(name)):
            raise MLMError(
                f"data.val_files: the validation set name '{name}' must be letters, digits, '_' or '-' "
                f"(it becomes part of the metric names val/<name>/loss...)"
            )


def holds_out(val_files: Any) -> bool:
    """Whether validation is (partly) a share held out of the training files: no files, or a name mapped to null."""
    return not val_files or (isinstance(val_files, dict) and not all(val_files.values()))


def check_streaming(sets: list[ShardSet], train_files: Any, val_files: Any) -> None:
    """Raises :class:`MLMError` unless ``data.streaming`` can replace the training files."""
    if train_files:
        raise MLMError("set data.train_files or data.streaming, not both (streaming replaces the training files)")
    if holds_out(val_files):
        raise MLMError(
            "data.streaming needs data.val_files (validation files; none may be null): a streamed corpus has no "
            "held-out share"
        )
    urls = [s.url for s in sets]
    if len(set(urls)) != len(urls):
        raise MLMError(f"data.streaming names a shard set twice: {', '.join(urls)}")
    for s in sets:
        if not s.weight > 0 or not math.isfinite(s.weight):
            raise MLMError(f"data.streaming: the weight of {s.url} must be a positive number, got {s.weight}")


def check_scorable(
    rows: TokenRows, collator: MLMCollator, special_ids: list[int], corpus: Corpus, split: str, chunk: int = 256
) -> None:
    """Raises :class:`MLMError` naming the files unless ``collator`` (evaluation's) masks a token of ``rows``.

    A file holding only "a", "." or a byte-order mark and blank lines gives rows with nothing masked, and no loss at
    the first validation. Reads rows until the first masked token (the first chunk, for real text); closes ``rows``.
    """
    try:
        for start in range(0, len(rows), chunk):
            batch = collator([rows[i] for i in range(start, min(start + chunk, len(rows)))])
            if len(batch["masked_positions"]):
                return
        special = set(special_ids)
        tokens = sum(int(t) not in special for i in range(len(rows)) for t in rows[i]["input_ids"])
    finally:
        rows.close()  # read once here; setup opens the set again
    files = ", ".join(str(f) for f in corpus.files)
    where = f"the validation share held out of {files}" if corpus.split else files
    raise MLMError(
        f"{where}: the {split} set cannot be scored: its {len(rows)} row(s) hold {tokens} token(s) that may be "
        f"masked and data.masking masks none of them, so it would have no loss. Give it more text "
        f"(a few sentences at least)"
    )
