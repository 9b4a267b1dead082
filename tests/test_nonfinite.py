"""A non-finite training loss: stop naming the step and keep the last good checkpoint, or skip the batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.cli.lightning_cli import run_cli
from mlm_lightning.model.module import MLMModule


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


def test_exploding_learning_rate_never_saves_nonfinite_weights(tiny_args, tmp_path: Path, capsys) -> None:
    # lr 1e39 (warm-up 4): step 1 leaves finite weights, step 2 infinite ones while its loss was still finite. A
    # save is due at every step (last.ckpt) and after step 2's validation (best): the run stops instead.
    args = [*tiny_args, "--model.learning_rate", "1e39", "--trainer.max_steps", "8"]
    args += ["--checkpoint.save_last_every_n_steps", "1", "--trainer.val_check_interval", "2"]
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "is NaN or infinite after step 2: the run stopped without saving it" in errors[0], errors[0]
    folder = tmp_path / "run" / "checkpoints"
    assert f"The last finite checkpoint is {folder / 'last.ckpt'}" in errors[0], errors[0]
    saved = sorted(folder.glob("*.ckpt"))
    assert [p.name for p in saved] == ["last.ckpt"]  # no best of the non-finite step 2
    for path in saved:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["global_step"] == 1
        moments = [t for s in checkpoint["optimizer_states"][0]["state"].values() for t in s.values()]
        assert all(torch.isfinite(t).all() for t in [*checkpoint["state_dict"].values(), *moments]), path


def test_nonfinite_weights_before_any_checkpoint_say_none_is_finite(tiny_args, tmp_path: Path, capsys) -> None:
    args = [*tiny_args, "--model.learning_rate", "1e39", "--model.warmup_steps", "0"]
    args += ["--checkpoint.save_last_every_n_steps", "1"]
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    assert "after step 1: the run stopped without saving it. No finite checkpoint of this run was saved" in err, err
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))
