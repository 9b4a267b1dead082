"""``--ckpt_path``: the checkpoint's settings against the configured ones, and its data against the configured data.

Checked before anything is written, so a resume or an evaluation that cannot be what the user asked for stops with
one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mlm_lightning.callbacks.checkpoint import MLMCheckpoint
from mlm_lightning.data import MLMDataModule
from mlm_lightning.errors import MLMError
from mlm_lightning.io.checkpoint_io import UNREADABLE, read_checkpoint, unreadable_checkpoint
from mlm_lightning.io.run_folder import RESUME_KEYWORDS
from mlm_lightning.settings import plain_values

# Model settings that may differ from the checkpoint's when resuming (optimisation and speed): the run uses the
# configured values (a restored optimizer keeps them: training/optim.py, training/schedule.py). Every other
# model setting describes the network and must match; unset ones are taken from the checkpoint.
RESUME_MAY_CHANGE = frozenset({"learning_rate", "weight_decay", "betas", "eps", "scheduler", "full_logits", "compile"})
# The warm-up (and wsd's decay share) belongs to the checkpoint's schedule, which a resume keeps: it may change
# only with the scheduler (a new scheduler starts a new schedule, with the configured warm-up).
WARMUP_SETTINGS = frozenset({"warmup_steps", "warmup_ratio", "decay_ratio"})
# Filled in from the data module (link_arguments), so compared once the classes are built.
LINKED_MODEL_SETTINGS = ("vocab_size", "tokenizer_name_or_path", "pad_token_id", "special_token_ids")


class CheckpointSettings(NamedTuple):
    """The checkpoint file named by ``--ckpt_path`` and the model settings saved in it."""

    path: str
    hparams: dict[str, Any]


def checkpoint_dir(config: Namespace) -> str:
    """The run's checkpoint folder: ``checkpoint.dirpath``, else ``<trainer.default_root_dir>/checkpoints``."""
    return config.checkpoint.dirpath or str(Path(config.trainer.default_root_dir or os.getcwd()) / "checkpoints")


def last_checkpoint(folder: str | Path) -> str | None:
    """The file ``--ckpt_path last`` resumes from: Lightning's rule (newest ``last*.ckpt``) for our one folder."""
    name = MLMCheckpoint.CHECKPOINT_NAME_LAST
    found = [p for p in Path(folder).glob("*.ckpt") if re.match(rf"^{name}(-(\d+))?$", p.stem)]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: a tuple and a list of equal items are the same (YAML has no tuples)."""

    def norm(v: Any) -> Any:
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    return norm(plain_values(a)) == norm(plain_values(b))


def reconcile_with_checkpoint(
    parser: LightningArgumentParser, full_config: Namespace, args: list[str] | None
) -> tuple[CheckpointSettings | None, Namespace]:
    """Reconciles the model settings with those of the checkpoint to resume from or evaluate.

    LightningCLI copies every hyperparameter of a ``--ckpt_path`` file over the configured ones (and those of
    ``last`` over none), so ``--model.hidden_size 64`` with a hidden-32 checkpoint was silently ignored.
    Here a setting the user gave (command line or config file) that differs from the checkpoint's is an error,
    unless it is one that may change on resume (:data:`RESUME_MAY_CHANGE`); unset ones come from the
    checkpoint. A bad or missing file gets one message, before anything is written.

    Args:
        parser: The CLI's parser (it parses ``args`` again without defaults, to know what the user gave).
        full_config: The parsed configuration, subcommand included.
        args: The command line's words (``None`` when the configuration came as a dict).

    Returns:
        The checkpoint read (``None`` without a local file) and the configuration with the checkpoint's values
        for the model settings the user left unset.
    """
    subcommand = full_config.get("subcommand")
    if not subcommand:
        return None, full_config
    config = full_config[subcommand]
    ckpt_path = config.get("ckpt_path")
    if ckpt_path and ckpt_path not in RESUME_KEYWORDS and "://" not in ckpt_path and not os.path.isfile(ckpt_path):
        raise unreadable_checkpoint(ckpt_path)
    path = last_checkpoint(checkpoint_dir(config)) if ckpt_path == "last" else ckpt_path
    if not path or path in RESUME_KEYWORDS or "://" in path:  # hpc, registry, remote: Lightning's own way
        return None, full_config
    # mmap: only the small hyperparameter record is read from a large file. Weights-only unless the user trusts
    # the file (--weights_only false): a crafted checkpoint is refused here, before anything runs or is written.
    ckpt = read_checkpoint(path, map_location="cpu", weights_only=config.get("weights_only"), mmap=True)
    saved = ckpt.get("hyper_parameters") or {}
    saved = {k: v for k, v in saved.items() if not k.startswith("_")}  # LightningCLI's `_instantiator`
    given = parser.parse_args(args, defaults=False)[subcommand] if args is not None else config
    given = given.get("model") or Namespace()
    taken, changed = {}, []
    new_schedule = "scheduler" in given and not _same(given["scheduler"], saved.get("scheduler"))
    for key, value in saved.items():
        if key in LINKED_MODEL_SETTINGS or _same(config.model.get(key), value):
            continue
        if key not in given:
            taken[key] = value  # not set: the checkpoint's
        elif key in RESUME_MAY_CHANGE or (key in WARMUP_SETTINGS and new_schedule):
            changed.append(f"model.{key} {value} -> {plain_values(given[key])}")
        else:
            raise MLMError(
                f"model.{key} is {plain_values(given[key])} but the checkpoint {path} has {value}: it cannot "
                f"change when resuming (only {', '.join(sorted(RESUME_MAY_CHANGE))} can; the warm-up only with "
                f"model.scheduler). Leave model.{key} unset to take the checkpoint's value"
            )
    if changed:
        rank_zero_info(f"settings that differ from the checkpoint {path}, used from here on: {', '.join(changed)}")
    if taken:
        full_config = parser.parse_object({subcommand: {"model": taken}}, full_config)
    return CheckpointSettings(path, saved), full_config


def check_tokenizer(model: Any, saved: CheckpointSettings) -> None:
    """The tokenizer's values linked into the model (they exist once the classes are built) are the checkpoint's."""
    path, hparams = saved
    if "vocab_size" in hparams and hparams["vocab_size"] != model.hparams.vocab_size:
        raise MLMError(
            f"the tokenizer ({model.hparams.tokenizer_name_or_path}) has {model.hparams.vocab_size} tokens but "
            f"the checkpoint {path} was trained with {hparams['vocab_size']} "
            f"({hparams.get('tokenizer_name_or_path')}): set data.tokenizer to the checkpoint's"
        )
    # A new model's special ids (its padding index) are the tokenizer's: another tokenizer with the same size
    # would silently move them. (A pretrained model's own ids are checked against the tokenizer when loaded.)
    ids = {"special_token_ids": hparams.get("special_token_ids")}
    if not hparams.get("model_name_or_path"):
        ids["pad_token_id"] = hparams.get("pad_token_id")
    for key, value in ids.items():
        if value is not None and value != model.hparams[key]:
            raise MLMError(
                f"the tokenizer ({model.hparams.tokenizer_name_or_path}) has the special-token ids "
                f"{model.hparams[key]} but the checkpoint {path} was trained with {value} "
                f"({hparams.get('tokenizer_name_or_path')}): set data.tokenizer to the checkpoint's"
            )
    if hparams.get("tokenizer_name_or_path") not in (None, model.hparams.tokenizer_name_or_path):
        rank_zero_warn(
            f"the checkpoint {path} was trained with the tokenizer {hparams['tokenizer_name_or_path']}, this run "
            f"uses {model.hparams.tokenizer_name_or_path}: make sure they are the same tokenizer"
        )


def check_resumed_data(datamodule: Any, ckpt_path: str | None, callback: Any) -> None:
    """A resume on data other than the checkpoint's: the error (or warning) now, before any output is written.

    The data module checks again when Lightning restores it (``load_state_dict``), for runs built from Python.
    """
    if not ckpt_path or not isinstance(datamodule, MLMDataModule):
        return
    if ckpt_path == "last":
        folder = callback.dirpath if isinstance(callback, ModelCheckpoint) else None
        ckpt_path = last_checkpoint(folder) if folder else None
    if not ckpt_path or "://" in ckpt_path or not os.path.isfile(ckpt_path):
        return
    try:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except UNREADABLE:
        return  # Lightning's restore reports it, with its own message
    datamodule.check_resumed_data((saved.get(type(datamodule).__qualname__) or {}).get("identity"), ckpt_path)
