"""The run folder guard: a new run never writes into another run's checkpoint folder.

:func:`run_dir_guard` stops a new run from writing into another run's checkpoint folder, and checks that the
output folders can be written before any training time is spent.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mlm_lightning.errors import MLMError
from mlm_lightning.io.atomic import check_can_write, remove_leftovers
from mlm_lightning.io.checkpoint_io import is_local

try:  # POSIX only: elsewhere the concurrent-run lock is skipped
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

# ``--ckpt_path`` values that Lightning resolves itself (``last`` = the newest last.ckpt of this run's folder).
RESUME_KEYWORDS = ("last", "hpc", "registry")


def _resuming_from_folder(ckpt_path: str | os.PathLike[str] | None, folder: Path) -> bool:
    if ckpt_path is None:
        return False
    if str(ckpt_path) in RESUME_KEYWORDS:
        return True
    return Path(ckpt_path).resolve().parent == folder.resolve()


def _step(path: Path) -> int | None:
    try:  # mmap: only the small record is read
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # unreadable: resuming from it reports that, with its own message
        return None


def _refuse_rewinding(ckpt_path: Path, folder: Path) -> None:
    """Refuses to resume from a checkpoint of this folder that is older than its ``last.ckpt``.

    The resumed run would write its own ``last.ckpt`` over the newer one: the steps after ``ckpt_path`` lost
    without a word. Refused, with the two ways to do it on purpose (a branch in another folder, or setting the
    newer file aside), rather than branched silently into a folder the user did not name (docs/training.md).
    """
    last = folder / "last.ckpt"
    if not last.is_file() or ckpt_path.resolve() == last.resolve():
        return
    older, newer = _step(ckpt_path), _step(last)
    if older is None or newer is None or older >= newer:
        return
    raise MLMError(
        f"{ckpt_path} (step {older}) is older than this run's {last} (step {newer}): resuming from it here would "
        f"replace that last.ckpt and lose steps {older + 1}-{newer}. To branch from it, keep this folder and write "
        f"the new run elsewhere: --trainer.default_root_dir NEW_FOLDER with --ckpt_path {ckpt_path}. To go back on "
        f"purpose, move {last.name} out of {folder} first"
    )


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
    if not trainer.is_global_zero or folder is None or not is_local(folder):
        yield
        return
    check_can_write(folder, "--trainer.default_root_dir or --checkpoint.dirpath")
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir and is_local(save_dir):
            check_can_write(save_dir, "--trainer.default_root_dir")
    existing = sorted(p.name for p in folder.glob("*.ckpt"))
    if existing and not _resuming_from_folder(ckpt_path, folder):
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise MLMError(
            f"{folder} already holds checkpoints of another run ({shown}). Start this run in its own folder "
            f"(--trainer.default_root_dir logs/NEW_NAME), or continue that run with --ckpt_path last, or delete them."
        )
    if ckpt_path is not None and str(ckpt_path) not in RESUME_KEYWORDS and existing:
        _refuse_rewinding(Path(ckpt_path), folder)
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
