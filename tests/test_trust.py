"""Numbers a user can believe: fixed evaluation masks, non-finite validation losses, the schedule's length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlm_lightning.cli import run_cli
from tests.helpers import MetricRecorder


def test_frozen_model_logs_the_same_val_loss_every_epoch_and_validate_reproduces_it(
    tiny_args: list[str], tmp_path: Path
) -> None:
    # Learning rate 0 and dropout 0: the weights never change, so only the validation masks could move val/loss.
    # 2 batches per epoch and validation every 2 steps: one validation at the end of each of 3 epochs.
    recorder = {"class_path": "tests.helpers.MetricRecorder", "init_args": {"name": "val/loss"}}
    args = [*tiny_args, "--trainer.max_steps", "6", "--trainer.limit_train_batches", "2"]
    args += ["--trainer.val_check_interval", "2", "--model.learning_rate", "0", "--model.dropout", "0"]
    cli = run_cli(["fit", *args, f"--trainer.callbacks+={json.dumps(recorder)}"])
    values = next(c for c in cli.trainer.callbacks if isinstance(c, MetricRecorder)).values
    assert cli.trainer.current_epoch == 3 and len(values) == 3
    assert values == [values[0]] * 3, values

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    recorded = torch.load(last, weights_only=True)["mlm_lightning"]["val_metrics"]["val/loss"]  # the model card's
    assert recorded == pytest.approx(values[-1], abs=1e-6)
    again = run_cli(["validate", *args, "--ckpt_path", str(last)]).trainer.callback_metrics["val/loss"].item()
    assert again == pytest.approx(values[-1], abs=1e-6)
