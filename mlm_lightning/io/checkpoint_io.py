"""Safe checkpoint files: written whole or not at all, and read with one readable error.

* :class:`AtomicCheckpointIO` writes every checkpoint under a temporary name and renames it only when complete,
  and turns an unreadable ``--ckpt_path`` into one message naming the file.
* :func:`read_checkpoint` / :func:`unreadable_checkpoint`: ``torch.load`` of a checkpoint and the one-line error
  for a missing, truncated or foreign file. Every checkpoint is read weights-only: tensors, plain Python values and
  the few types of :data:`SAFE_GLOBALS`, nothing that could run code; a file that needs more is refused
  (:func:`refused_checkpoint`) unless the user passes ``--weights_only false`` for a file they trust.
* :func:`checkpoint_format`: the format of our own record in a checkpoint (:data:`CHECKPOINT_FORMAT`): a newer or
  unknown one is refused in one line, an older one migrated with one info line.
* :func:`explain_checkpoint_errors`: "this checkpoint does not fit this model" as one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import pickle
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mlm_lightning.errors import MLMError
from mlm_lightning.io.atomic import atomic_file

log = logging.getLogger(__name__)

# The layout of what mlm-lightning keeps in a checkpoint (its ``"mlm_lightning"`` record, the hyperparameters and
# callback states it reads back), written as ``checkpoint["mlm_lightning"]["format"]``. Raise it when a checkpoint's
# content changes so that an older mlm-lightning would misread it, and add the step from the previous format to
# _MIGRATIONS. 1: checkpoints written before the format was recorded.
CHECKPOINT_FORMAT = 2


def _from_format_1(checkpoint: dict[str, Any]) -> None:
    """Format 1 to 2: nothing moved (2 only adds the format itself)."""


# format -> the function that turns a checkpoint of that format into one of the next, in place.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], None]] = {1: _from_format_1}
_ANNOUNCED: set[str] = set()  # checkpoints whose migration this process has said (fit reads a checkpoint twice)


def checkpoint_format(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Checks the format of a checkpoint's own record and migrates an older one in place (one info line).

    Raises:
        MLMError: The checkpoint comes from a newer mlm-lightning, or its record has a layout this one does not know.
    """
    from mlm_lightning import __version__

    record = checkpoint.get("mlm_lightning", {})
    version = record.get("format", 1) if isinstance(record, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > CHECKPOINT_FORMAT:
        raise MLMError(
            f"{path}: written by a newer mlm-lightning (checkpoint format {version}; mlm-lightning {__version__} "
            f"reads formats up to {CHECKPOINT_FORMAT}): upgrade mlm-lightning to use it"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version not in (*_MIGRATIONS, CHECKPOINT_FORMAT):
        raise MLMError(
            f"{path}: the checkpoint's mlm_lightning record has a layout this mlm-lightning ({__version__}) does not "
            f"know (format {version!r}): it was not written by `python -m mlm_lightning fit`, or it was edited"
        )
    if version < CHECKPOINT_FORMAT:
        for step in range(version, CHECKPOINT_FORMAT):
            _MIGRATIONS[step](checkpoint)
        checkpoint.setdefault("mlm_lightning", {})["format"] = CHECKPOINT_FORMAT
        if str(path) not in _ANNOUNCED:
            _ANNOUNCED.add(str(path))
            log.info("%s: checkpoint format %s (an older mlm-lightning), read as format %s", path, version, step + 1)
    return checkpoint


def is_local(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a local file path (no URL scheme other than ``file://``)."""
    text = str(path)
    return "://" not in text or text.startswith("file://")


# What torch.load raises for a truncated, corrupt or foreign file.
UNREADABLE = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile, OSError)

# The only types besides tensors and plain Python values (dict, list, str, numbers, ...: torch's own allowlist) that
# mlm-lightning's checkpoints may hold, so the only ones a weights-only read builds: hyperparameters given as paths
# from Python. Constructing them runs no code of the file's choosing. Add a type here, and only here, when a
# checkpoint of ours needs it (tests/test_checkpoint_trust.py reads real ones weights-only).
SAFE_GLOBALS: tuple[type, ...] = (
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
)
torch.serialization.add_safe_globals(list(SAFE_GLOBALS))

# The opt-in for a checkpoint that needs more, named in the refusal: the flag of fit/validate (Lightning's own),
# export, fill-mask and evaluate.
TRUST_FLAG = "--weights_only false"


def refused_checkpoint(path: str | os.PathLike[str]) -> MLMError | None:
    """The one-line refusal for a checkpoint whose reading would build objects beyond :data:`SAFE_GLOBALS`.

    ``None`` when the file holds no such object (it failed to load for another reason: see
    :func:`unreadable_checkpoint`). Found by reading the pickle's instructions, without running any of them.
    """
    try:
        unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint at all: unreadable_checkpoint says so
        return None
    if not unsafe:
        return None
    shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
    return MLMError(
        f"{path}: refused: reading it would call {shown}, which mlm-lightning's checkpoints never hold (a crafted "
        f"checkpoint runs code that way). Only for a file you trust (you wrote it), pass {TRUST_FLAG}"
    )


def unreadable_checkpoint(path: str | os.PathLike[str], err: BaseException | None = None) -> MLMError:
    """The one-line error for a checkpoint file that is missing or that ``torch.load`` could not read."""
    if isinstance(err, FileNotFoundError) or not os.path.isfile(path):
        return MLMError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive whose index is at the very end
        why = "not a complete checkpoint: truncated (e.g. by a killed write), corrupt, or another kind of file"
    else:
        first = str(err).strip().splitlines()[0] if err is not None and str(err).strip() else "unreadable"
        why = f"not a readable checkpoint ({first[:160]})"
    return MLMError(f"{path}: {why}. Pass another checkpoint: a run keeps last.ckpt and its best one in checkpoints/")


def read_checkpoint(
    path: str | os.PathLike[str], map_location: Any = None, weights_only: bool | None = True, mmap: bool = False
) -> dict:
    """``torch.load`` of a Lightning checkpoint that fails with one readable :class:`MLMError` naming the file.

    Args:
        path: The checkpoint file.
        map_location: As ``torch.load``'s.
        weights_only: ``True`` or ``None`` (Lightning's "not set"): tensors, plain values and :data:`SAFE_GLOBALS`
            only, and a file that needs more is refused. ``False`` unpickles anything: only for a trusted file.
        mmap: Tensors stay in the file (mapped, read when used) instead of being copied into memory.
    """
    weights_only = weights_only is not False
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except UNREADABLE as err:
        refused = refused_checkpoint(path) if weights_only and isinstance(err, pickle.UnpicklingError) else None
        raise (refused or unreadable_checkpoint(path, err)) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MLMError(f"{path}: not a Lightning checkpoint (no 'state_dict' in it)")
    return checkpoint_format(checkpoint, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint plugin, made crash-safe.

    A checkpoint is written to a hidden temporary file beside its target, ``fsync``-ed and renamed over the
    target, so a crash mid-write leaves the previous good file (Lightning's own plugin truncates the target
    first). Loading a missing, truncated or corrupt file raises :class:`MLMError` naming it. Remote paths
    (``s3://`` and the like) fall back to Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Through a Python file: a failed write then raises OSError with its errno (a full disk is reported as
        # such by atomic_file), where torch's own file writer only says "unexpected pos".
        with atomic_file(str(path).removeprefix("file://")) as tmp, open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not is_local(path):  # weights-only there too (Lightning's default for a URL is a full unpickle)
            loaded = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only is not False)
            return checkpoint_format(loaded, path)
        return read_checkpoint(str(path).removeprefix("file://"), map_location=map_location, weights_only=weights_only)


@contextlib.contextmanager
def explain_checkpoint_errors(ckpt_path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Turns "this checkpoint does not fit this model" inside ``trainer.fit/validate/test`` into an MLMError."""
    try:
        yield
    except RuntimeError as err:
        # torch's load_state_dict message; stable since torch 1.0.
        if ckpt_path is None or "Error(s) in loading state_dict" not in str(err):
            raise
        detail = " ".join(str(err).split())
        raise MLMError(
            f"checkpoint {ckpt_path} does not fit the configured model ({detail[:300]}). Use the settings it was "
            f"trained with: the run's lightning_logs/version_N/config.yaml holds them."
        ) from err
