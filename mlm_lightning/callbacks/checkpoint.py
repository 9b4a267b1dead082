"""``last.ckpt`` kept current between validations, so a killed run loses at most N steps.

:class:`MLMCheckpoint` is Lightning's ``ModelCheckpoint`` that also rewrites ``last.ckpt`` every N optimizer
steps, after the last batch of every epoch and when a ``SIGTERM`` arrives. It never writes a checkpoint whose
weights or optimizer state hold NaN or infinity (:func:`first_nonfinite`): the run stops instead, naming the newest
checkpoint that is finite (:func:`last_finite_checkpoint`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mlm_lightning.errors import MLMError
from mlm_lightning.io.atomic import atomic_file
from mlm_lightning.io.checkpoint_io import UNREADABLE
from mlm_lightning.settings import NonNegativeInt


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor's shard (FSDP2)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every floating-point tensor is free of NaN and infinity: one device-to-host copy for all."""
    flags = [torch.isfinite(t).all() for t in map(_local, tensors) if t.is_floating_point() and t.numel()]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all()) if flags else True


def _optimizer_tensors(optimizers: list[Any]) -> list[tuple[str, torch.Tensor]]:
    return [
        (f"the optimizer's {key}", value)
        for optimizer in optimizers
        for state in optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    ]


def first_nonfinite(module: torch.nn.Module, optimizers: list[Any]) -> str | None:
    """What holds NaN or infinity (``the weight NAME``, ``the optimizer's exp_avg_sq``), or None if all is finite.

    Looks at the parameters and the optimizer state (Adam's moments): a step that followed a finite loss can
    still leave them non-finite, and a checkpoint of them would only resume into NaN.
    """
    named = [(f"the weight {name}", p.detach()) for name, p in module.named_parameters()]
    named += _optimizer_tensors(optimizers)
    if _all_finite([t for _, t in named]):
        return None
    return next((what for what, t in named if not _all_finite([t])), "a weight")


def checkpoint_is_finite(path: str) -> bool:
    """Whether the checkpoint file at ``path`` exists and its weights and optimizer state are all finite.

    A folder (a sharded checkpoint) is taken as it is: this package never writes a non-finite one.
    """
    if os.path.isdir(path):
        return True
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except UNREADABLE:
        return False
    tensors = [t for t in checkpoint.get("state_dict", {}).values() if isinstance(t, torch.Tensor)]
    for optimizer in checkpoint.get("optimizer_states") or []:
        for state in (optimizer.get("state") or {}).values():
            tensors += [t for t in state.values() if isinstance(t, torch.Tensor)]
    return _all_finite(tensors)


def last_finite_checkpoint(callback: Any) -> str | None:
    """The newest checkpoint file of ``callback`` (a ModelCheckpoint) whose weights and optimizer state are finite.

    Each candidate (last, best, the other kept ones) is read and checked, so a file written by an older version
    of this package (which saved non-finite weights) is never named as good.
    """
    if not isinstance(callback, ModelCheckpoint):
        return None
    paths = [callback.last_model_path, callback.best_model_path, *callback.best_k_models]
    found = {p for p in paths if p and os.path.exists(p)}
    return max((p for p in found if checkpoint_is_finite(p)), key=os.path.getmtime, default=None)


def describe_last_finite(callback: Any) -> str:
    """``The last finite checkpoint is PATH`` or ``No checkpoint of this run is finite (none was saved before)``."""
    path = last_finite_checkpoint(callback)
    if path is None:
        return "No finite checkpoint of this run was saved before it"
    return f"The last finite checkpoint is {path}"


# Why not a second, stock ``ModelCheckpoint(every_n_train_steps=N, save_last=True, save_top_k=0)`` beside the
# best-checkpoint one (issue 12; read against Lightning 2.6.6's model_checkpoint.py):
# * It saves only at multiples of N. The epoch's last batch and the run's last step are saved by ModelCheckpoint
#   only in ``on_train_epoch_end`` (``save_on_train_epoch_end``), and Lightning 2.6 resumes a checkpoint written
#   there by training one extra batch of the finished epoch: tests/test_resume.py::
#   test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run (the kill after step 15 resumes from the epoch's
#   last batch, step 14) would train a batch twice. A run whose max_steps is not a multiple of N would also end
#   with a last.ckpt older than its final step.
# * Its SIGTERM save, ``save_on_exception=True`` (Lightning 2.6), fires on every exception that ends ``fit``, not
#   only on the ``SIGTERMException`` raised after the batch: the NaN stop (NonFiniteLoss) and a user error would
#   save too, writing the very non-finite weights that :func:`first_nonfinite` keeps out of checkpoints. Without
#   it the run would lose up to N steps, where tests/test_faults.py::
#   test_sigterm_saves_last_and_exits_143_then_resume_continues_exactly needs last.ckpt of the very step it stopped
#   at (and, under DDP, every rank told to stop: ``_sigterm``). ``on_exception`` below saves on SIGTERM only.
# * Two ModelCheckpoints writing ``last.ckpt`` into one folder keep separate ``last_model_path`` and
#   ``_last_global_step_saved``: with the default ``enable_version_counter`` the second writes ``last-v1.ckpt``
#   next to the first's ``last.ckpt`` (``_save_last_checkpoint``'s version loop), and each deletes only its own
#   previous file, so the folder keeps stale "last" files and ``--ckpt_path last`` picks one by modification time.
# So this subclass keeps one callback (one ``last.ckpt``) and adds the saves Lightning lacks; the atomic writes
# come from AtomicCheckpointIO either way.
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
        self.save_last_every_n_steps = save_last_every_n_steps
        self._last_step_written = -1
        self._checked_step = -1
        self._before_validation: dict[str, Any] | None = None
        self._stopping_in_validation = False
        # Lightning's own step- and time-triggered saves (its arguments, kept here to know when it saves).
        self._every_n_steps = kwargs.get("every_n_train_steps") or 0
        self._timed = kwargs.get("train_time_interval") is not None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        every, step = self.save_last_every_n_steps, trainer.global_step
        # The epoch's and the run's last batch are saved here, not in on_train_epoch_end: Lightning resumes a
        # checkpoint written there by training one extra batch in the finished epoch (seen with Lightning 2.6
        # when validation is not at the epoch end), which breaks exact resume.
        last_of_epoch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        last_of_run = 0 < trainer.max_steps <= step
        write_last = (every > 0 and step % every == 0) or last_of_epoch or last_of_run or self._sigterm(trainer)
        lightning_saves = (self._every_n_steps and step % self._every_n_steps == 0) or self._timed
        if write_last or lightning_saves:
            self.refuse_nonfinite(trainer)
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if write_last:
            self._write_last(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            # The loops' state as it was before this validation (counters only: small): a SIGTERM in the middle
            # of it saves the training state with these, as if saved right before the validation began.
            self._before_validation = copy.deepcopy(trainer.fit_loop.state_dict())

    # Every other save of ModelCheckpoint (the best checkpoint after a validation, at an epoch's or the run's end)
    # comes after one of these hooks: the weights are checked first.
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.refuse_nonfinite(trainer)
        super().on_validation_end(trainer, pl_module)
        self._before_validation = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        # Stopped by SIGTERM (or a first Ctrl-C) where on_train_batch_end did not save: in a validation, or right
        # after one. No trained step is lost: last.ckpt of this step (skipped if it holds it already).
        self._stopping_in_validation = self._before_validation is not None
        try:
            self.refuse_nonfinite(trainer)
            self._write_last(trainer)
        finally:
            self._stopping_in_validation = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._stopping_in_validation and self._before_validation is not None:
            # Resumed, this continues with the next training step: the interrupted validation is not redone.
            checkpoint.setdefault("loops", {})["fit_loop"] = self._before_validation

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.refuse_nonfinite(trainer)
        super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.refuse_nonfinite(trainer)
        super().on_train_end(trainer, pl_module)

    def refuse_nonfinite(self, trainer: L.Trainer) -> None:
        """Stops the run, naming the last finite checkpoint, if the weights or optimizer state are not finite.

        Checked once per step, on every rank (a sharded model's ranks each hold a part), before anything is saved:
        a checkpoint of NaN weights would be named "last" and "best" and resume into NaN.
        """
        if self._checked_step == trainer.global_step or trainer.lightning_module is None:
            return
        self._checked_step = trainer.global_step
        bad = first_nonfinite(trainer.lightning_module, trainer.optimizers)
        if not trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
            return
        raise MLMError(
            f"{bad or 'a weight or optimizer state (on another process)'} is NaN or infinite after step "
            f"{trainer.global_step}: the run stopped without saving it. {describe_last_finite(self)}. Lower "
            f"model.learning_rate or raise model.warmup_steps, or use precision 32-true or bf16-mixed."
        )

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
