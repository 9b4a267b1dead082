"""Validation around training: the base model's figures at step 0, a final validation, the step axis."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from mlm_lightning.callbacks.story import end_of_fit_probe, tensorboards, validation_metrics


class ValidateBeforeFit(Callback):
    """Validates once before the first training step, so every validation curve starts at the base model's value.

    Logged at step 0 under the same tags as every validation (``val/loss``... or ``val/<name>/...``); kept in the
    checkpoints (``mlm_lightning.base_metrics``), so the model card of an export, like the table this prints at
    the end of ``fit``, puts the base model's figures beside the adapted model's. A resumed run does not validate
    again (it keeps the figures of its checkpoint). No checkpoint is saved for step 0 (Lightning's
    ``ModelCheckpoint`` saves nothing before the first optimizer step; tests/test_adaptation.py checks it), so
    ``checkpoint.monitor`` never picks the base model as the best and ``export`` never writes it out. The global
    random states are put back afterwards: training draws the same numbers as without this validation.

    Args:
        enabled: Validate before the first step. ``None``: when ``model.model_name_or_path`` loads a pretrained
            model (a from-scratch model's figures before training are those of random weights).
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = enabled
        self.base_metrics: dict[str, float] = {}

    def wanted(self, pl_module: L.LightningModule) -> bool:
        """Whether this run validates before training (``enabled``, or its default for the model)."""
        if self.enabled is not None:
            return self.enabled
        return bool(getattr(pl_module, "hparams", {}).get("model_name_or_path"))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.wanted(pl_module) or trainer.global_step > 0 or trainer.ckpt_path or self.base_metrics:
            return
        from mlm_lightning.callbacks.random_states import collect_random_states, restore_random_states

        # The random states are put back after it: a dataloader iterator draws its seed from torch's global
        # generator, and training (dropout) must draw the same numbers as in a run that does not validate first.
        states = collect_random_states()
        # What Lightning's training loop does around a validation within an epoch (loop internals: private_api.py).
        trainer.validating = True
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.training = True
        restore_random_states(states)
        self.base_metrics = validation_metrics(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.base_metrics:
            checkpoint.setdefault("mlm_lightning", {})["base_metrics"] = dict(self.base_metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"base_metrics": dict(self.base_metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_metrics = dict(state_dict.get("base_metrics", {}))

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlm_lightning.tools.report import before_after_table

        after = validation_metrics(trainer)
        if not self.base_metrics or not after:
            return
        table = before_after_table(self.base_metrics, after, trainer.global_step)
        probe = end_of_fit_probe(trainer, pl_module)  # the downstream task's figures, base vs adapted, below
        table += f"\n\n{probe}" if probe else ""
        rank_zero_info(table)
        for logger in tensorboards(trainer):
            logger.experiment.add_text("val/before_after", table, global_step=trainer.global_step)


class GlobalStepAxis(Callback):
    """Puts every logged scalar at ``trainer.global_step``, the optimizer steps done, as checkpoint names do.

    Lightning plots the metrics of the k-th training step and of the validation after it at k-1 (its batch
    counter before it moves on) while the checkpoint of that moment is ``step=k``. A metric named ``step`` is
    Lightning's documented way to give the x-axis; ``ModelCheckpoint`` reads the same value, which is the
    global step here, so checkpoint names do not change. ``train/lr`` (Lightning's LearningRateMonitor, logged
    before each step) is at the steps done when it is read: the learning rate the next step uses.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        pl_module.log("step", float(trainer.global_step), on_step=True, on_epoch=False, batch_size=1)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("step", float(trainer.global_step), on_step=False, on_epoch=True, batch_size=1)


class FinalValidation(Callback):
    """Validates after the last training step when the schedule of validations would not.

    A run that ends between two validations (e.g. resumed to a ``max_steps`` that is not a multiple of
    ``val_check_interval``) would otherwise end with no metrics of its final weights: no point on the curves,
    nothing on the hparams tab, and a final checkpoint whose model card has no figures. Setting
    ``trainer.should_stop`` at the last step makes Lightning run the validation it runs before an early stop;
    a validation already due at that step is not repeated.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        last_step = 0 < trainer.max_steps <= trainer.global_step
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs
        if last_step or (last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            trainer.should_stop = True
