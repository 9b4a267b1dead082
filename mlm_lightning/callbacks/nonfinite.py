"""What happens when a training loss is NaN or infinite: stop with a message naming the step, or skip the batch."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from mlm_lightning.callbacks.checkpoint import describe_last_finite
from mlm_lightning.errors import MLMError
from mlm_lightning.settings import NonNegativeInt


class NonFiniteLoss(Callback):
    """Checks every training loss before its backward pass.

    ``stop`` (default) ends the run with one message naming the step, before the bad batch touches the
    weights, so the last checkpoint on disk stays the last good one (nothing is saved on the way out).
    ``skip`` drops the batch's gradients so the optimizer leaves the weights and its moments unchanged; the step
    still counts (``global_step`` and the learning-rate schedule advance), the batch is reported, and
    ``train/skipped_batches`` is logged. With fp16 mixed precision the GradScaler already skips such steps and
    this only counts them. Lightning's ``detect_anomaly`` finds the operation that produced a NaN; this callback
    only keeps the run and its checkpoints sane. The check costs one device-to-host copy of the loss per step.

    Args:
        action: ``stop`` the run, or ``skip`` the batch and count it.
        max_skipped: With ``skip``, stop anyway once this many batches have been skipped in the run (a run that
            keeps producing them has diverged).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skipped: NonNegativeInt = 100) -> None:
        self.action = action
        self.max_skipped = max_skipped
        self.skipped = 0
        self._drop_grads = False

    @property
    def state_key(self) -> str:
        return "NonFiniteLoss"

    def _where(self, trainer: L.Trainer) -> str:
        loop = trainer.fit_loop.epoch_loop
        return f"step {trainer.global_step + 1} (epoch {trainer.current_epoch}, batch {loop.batch_idx + 1})"

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        # All ranks must take the same branch, or DDP would hang in the next all-reduce.
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        self._drop_grads = False
        if not bad:
            return
        where = self._where(trainer)
        if self.action == "stop":
            raise MLMError(
                f"training loss is {loss.item()} at {where}: stopped before it changed the weights. "
                f"{describe_last_finite(trainer.checkpoint_callback)}. Lower model.learning_rate or raise "
                f"model.warmup_steps, use precision 32-true or bf16-mixed, or set nonfinite.action=skip to skip such "
                f"batches."
            )
        self.skipped += 1
        if self.skipped > self.max_skipped:
            raise MLMError(
                f"{self.skipped} training batches had a non-finite loss (the last at {where}), more than "
                f"nonfinite.max_skipped={self.max_skipped}: the run has diverged; resume from an earlier checkpoint "
                f"with a lower model.learning_rate"
            )
        rank_zero_warn(f"training loss is {loss.item()} at {where}: batch skipped ({self.skipped} so far)")
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._drop_grads = scaler is None  # a GradScaler sees the non-finite gradients and skips the step itself

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._drop_grads:
            # AdamW leaves parameters without a gradient (and their moments) untouched: a true skip.
            for param in pl_module.parameters():
                param.grad = None
            self._drop_grads = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.action == "skip":
            pl_module.log("train/skipped_batches", float(self.skipped), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
