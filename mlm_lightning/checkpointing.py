"""Exact resume and safe checkpoint files.

* :class:`AtomicCheckpointIO` writes every checkpoint under a temporary name and renames it only when complete,
  and turns an unreadable ``--ckpt_path`` into one message naming the file.
* :class:`MLMCheckpoint` is Lightning's ``ModelCheckpoint`` that also rewrites ``last.ckpt`` every N optimizer
  steps and after the last batch of every epoch, so a killed run loses at most N steps.
* :class:`RandomStates` saves the global random states (torch incl. dropout, CUDA, numpy, Python) in checkpoints
  and restores them right before the first training step after a resume. Together with the data position
  (``ResumableDataLoader``) and the per-example masks, the resumed run's losses equal an uninterrupted run's.
* :func:`run_dir_guard` stops a new run from writing into another run's checkpoint folder, and checks that the
  output folders can be written before any training time is spent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from mlm_lightning.atomic import atomic_file, check_can_write, remove_leftovers
from mlm_lightning.errors import MLMError
from mlm_lightning.settings import NonNegativeInt

try:  # POSIX only: elsewhere the concurrent-run lock is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

RESUME_KEYWORDS = ("last", "hpc", "registry")


def _is_local(path: str | os.PathLike[str]) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


# ------------------------------------------------------------------------------------------ checkpoint files
# What torch.load raises for a truncated, corrupt or foreign file.
UNREADABLE = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile, OSError)


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


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = None, weights_only: bool | None = None) -> dict:
    """``torch.load`` of a Lightning checkpoint that fails with one readable :class:`MLMError` naming the file."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except UNREADABLE as err:
        raise unreadable_checkpoint(path, err) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MLMError(f"{path}: not a Lightning checkpoint (no 'state_dict' in it)")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint plugin, made crash-safe.

    A checkpoint is written to a hidden temporary file beside its target, ``fsync``-ed and renamed over the
    target, so a crash mid-write leaves the previous good file (Lightning's own plugin truncates the target
    first). Loading a missing, truncated or corrupt file raises :class:`MLMError` naming it. Remote paths
    (``s3://`` and the like) fall back to Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # Through a Python file: a failed write then raises OSError with its errno (a full disk is reported as
        # such by atomic_file), where torch's own file writer only says "unexpected pos".
        with atomic_file(str(path).removeprefix("file://")) as tmp, open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
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


class MLMCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also keeps ``last.ckpt`` current between validations.

    The best checkpoint (by ``monitor``) is still saved after validation, as in Lightning. In addition
    ``last.ckpt`` is rewritten every ``save_last_every_n_steps`` optimizer steps, after the last batch of every
    training epoch and after the run's last step, so ``--ckpt_path last`` always resumes from the newest
    complete checkpoint. It needs ``save_last`` to be true.

    Args:
        save_last_every_n_steps: Rewrite ``last.ckpt`` every this many optimizer steps (0 = only at epoch ends
            and when a best checkpoint is saved). A killed run loses at most this many steps.
        **kwargs: Every ``ModelCheckpoint`` argument (``dirpath``, ``monitor``, ``save_top_k``, ...).
    """

    def __init__(self, save_last_every_n_steps: NonNegativeInt = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if save_last_every_n_steps < 0:
            raise MLMError(f"checkpoint.save_last_every_n_steps must be >= 0, got {save_last_every_n_steps}")
        self.save_last_every_n_steps = save_last_every_n_steps
        self._last_step_written = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        every = self.save_last_every_n_steps
        # The epoch's and the run's last batch are saved here, not in on_train_epoch_end: Lightning resumes a
        # checkpoint written there by training one extra batch in the finished epoch (seen with Lightning 2.6
        # when validation is not at the epoch end), which breaks exact resume.
        last_of_epoch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        last_of_run = 0 < trainer.max_steps <= trainer.global_step
        if (every > 0 and trainer.global_step % every == 0) or last_of_epoch or last_of_run or self._sigterm(trainer):
            self._write_last(trainer)

    @staticmethod
    def _sigterm(trainer: L.Trainer) -> bool:
        """Whether a SIGTERM arrived: Lightning then stops right after this batch, so last.ckpt is saved now.

        Under DDP the ranks decide together (saving is collective, and a rank that went on alone would hang), and
        every rank is told, so that all of them stop after this batch.
        """
        received = trainer.received_sigterm
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
            if received:
                trainer._signal_connector.received_sigterm = True  # what Lightning's loops check after the batch
        return received

    def _write_last(self, trainer: L.Trainer) -> None:
        # Not ModelCheckpoint._save_last_checkpoint: that marks the step as saved, which would stop a
        # validation at the same step from saving the best checkpoint.
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return  # skipped also when Lightning saved (and so wrote last.ckpt) at this very step
        if self._last_step_written == trainer.global_step or self.dirpath is None:
            return
        path = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        previous, self.last_model_path = self.last_model_path, path
        trainer.save_checkpoint(path, self.save_weights_only)
        self._last_step_written = trainer.global_step
        if previous and self._should_remove_checkpoint(trainer, previous, path):
            self._remove_checkpoint(trainer, previous)

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        # ``save_last="link"``: Lightning deletes last.ckpt and then creates the link; a crash in between
        # leaves no last.ckpt. Create the link under a temporary name and rename it over instead.
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            tmp = f"{linkpath}.tmp-link"
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
                os.replace(tmp, linkpath)
            except OSError:  # no symlinks (Windows without privileges): an atomic copy
                with atomic_file(linkpath) as copy, open(filepath, "rb") as src, open(copy, "wb") as dst:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
        trainer.strategy.barrier()


# ------------------------------------------------------------------------------------------- random states
def collect_random_states() -> dict[str, Any]:
    """This process's global random states, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(state), py_gauss],
    }
    # Only the current device: get_rng_state_all() would create a CUDA context on every visible GPU.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_random_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, py_gauss = states["python"]
    random.setstate((version, tuple(state), py_gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RandomStates(Callback):
    """Makes the global random states part of the checkpoint, for bit-exact resume.

    The states are captured at the end of every training batch and put back at the start of the next one, so
    whatever runs between two training steps (validation, checkpointing, a new epoch's dataloader iterator)
    never shifts the random numbers that dropout draws. A checkpoint holds the states captured after its last
    step; after a resume they are put back right before the first training step. Under DDP every rank's
    states are gathered into the checkpoint and each rank gets its own back (same world size only).
    """

    def __init__(self) -> None:
        self._states: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RandomStates"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self._states is not None:
            restore_random_states(self._states)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._states = collect_random_states()

    def state_dict(self) -> dict[str, Any]:
        states = self._states if self._states is not None else collect_random_states()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)  # every rank takes part in dump_checkpoint
            return {"ranks": gathered}
        return {"ranks": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        dist = torch.distributed
        rank, world = (
            (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        )
        if len(ranks) == world:
            self._states = ranks[rank]
        else:
            rank_zero_warn(
                f"the checkpoint holds random states for {len(ranks)} processes, this run has {world}: "
                f"dropout will not continue exactly as in the original run"
            )


# ---------------------------------------------------------------------------------------------- run folders
def _resuming_from_folder(ckpt_path: str | os.PathLike[str] | None, folder: Path) -> bool:
    if ckpt_path is None:
        return False
    if str(ckpt_path) in RESUME_KEYWORDS:
        return True
    return Path(ckpt_path).resolve().parent == folder.resolve()


@contextlib.contextmanager
def run_dir_guard(trainer: L.Trainer, ckpt_path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Checks the run's output folders and holds the checkpoint folder for the length of a ``fit``.

    * Every local output folder (checkpoints, loggers) must be writable: found out now, not at the first
      checkpoint after hours of training.
    * A checkpoint folder that already holds ``.ckpt`` files belongs to another run: it is used only when
      resuming from it (``--ckpt_path last`` or a file in it); otherwise the run stops with a message.
    * An exclusive lock (``flock`` on the folder, released by the OS even on ``SIGKILL``) stops two live runs
      from writing the same checkpoints. Holding it, the hidden temporary files of a killed write are removed.
    """
    callback = trainer.checkpoint_callback
    folder = Path(callback.dirpath) if isinstance(callback, ModelCheckpoint) and callback.dirpath else None
    if not trainer.is_global_zero or folder is None or not _is_local(folder):
        yield
        return
    check_can_write(folder, "--trainer.default_root_dir or --checkpoint.dirpath")
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir and _is_local(save_dir):
            check_can_write(save_dir, "--trainer.default_root_dir")
    existing = sorted(p.name for p in folder.glob("*.ckpt"))
    if existing and not _resuming_from_folder(ckpt_path, folder):
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise MLMError(
            f"{folder} already holds checkpoints of another run ({shown}). Continue that run with "
            f"--ckpt_path last, or start a new one in another folder (--trainer.default_root_dir), or delete them."
        )
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise MLMError(
                        f"another run is writing checkpoints to {folder} right now: wait for it to finish, or use "
                        f"another folder (--trainer.default_root_dir)"
                    ) from None
                # Other errors (e.g. no lock support on a network file system): carry on without the lock.
        remove_leftovers(folder)  # half-written files of a killed run; nobody else is writing here now
        yield
    except BaseException:
        for path in created:  # a run that failed before its first checkpoint leaves no empty folders
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock
