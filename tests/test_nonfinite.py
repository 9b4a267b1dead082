"""A non-finite training loss: stop naming the step and keep the last good checkpoint, or skip the batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.cli import run_cli
from mlm_lightning.module import MLMModule


@pytest.fixture
def poison(monkeypatch):
    """Makes the training loss NaN at the given (1-based) optimizer steps."""

    def apply(*steps: int) -> None:
        real = MLMModule.training_step

        def training_step(self, batch, batch_idx):
            loss = real(self, batch, batch_idx)
            return loss * math.nan if self.trainer.global_step + 1 in steps else loss

        monkeypatch.setattr(MLMModule, "training_step", training_step)

    return apply


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_args, tmp_path: Path, poison, capsys) -> None:
    poison(5)
    args = [*tiny_args, "--trainer.max_steps", "8", "--checkpoint.save_last_every_n_steps", "2"]
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    assert "training loss is nan at step 5 (epoch 0, batch 5)" in err and "Traceback" not in err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(last) in err
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4  # nothing saved after the bad batch
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_skipped_batch_leaves_weights_and_optimizer_untouched(tiny_args, tmp_path: Path, poison) -> None:
    # A constant schedule after warm-up, so the learning rate of a step does not depend on max_steps.
    args = [*tiny_args, "--model.scheduler", "constant", "--trainer.val_check_interval", "4"]
    clean = run_cli(["fit", *args, "--trainer.max_steps", "4"]).trainer
    poison(5, 6)
    args[args.index("--trainer.default_root_dir") + 1] = str(tmp_path / "skipped")
    with pytest.warns(UserWarning, match="training loss is nan at step 6 .*batch skipped \\(2 so far\\)"):
        skipped = run_cli(["fit", *args, "--trainer.max_steps", "6", "--nonfinite.action", "skip"]).trainer
    assert skipped.global_step == 6 and skipped.callback_metrics["train/skipped_batches"] == 2
    for a, b in zip(clean.lightning_module.parameters(), skipped.lightning_module.parameters()):
        assert torch.equal(a, b)
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in skipped.optimizers[0].state.values()]
    expected = [(s["exp_avg"], s["exp_avg_sq"]) for s in clean.optimizers[0].state.values()]
    assert all(torch.equal(x, y) for m, e in zip(moments, expected) for x, y in zip(m, e))


def test_too_many_skipped_batches_stop_the_run(tiny_args, poison, capsys) -> None:
    poison(2, 3, 4)
    args = [*tiny_args, "--trainer.max_steps", "6", "--nonfinite.action", "skip", "--nonfinite.max_skipped", "2"]
    assert main(["fit", *args]) == 2
    assert "3 training batches had a non-finite loss (the last at step 4" in capsys.readouterr().err
