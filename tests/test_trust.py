"""Numbers a user can believe: fixed evaluation masks, non-finite validation losses, the schedule's length."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mlm_lightning.cli.lightning_cli import run_cli
from tests.helpers import MetricRecorder, assert_one_line


@pytest.mark.slow
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


@pytest.mark.slow
def test_roberta_rows_fit_the_positions_after_its_padding_index(
    tiny_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from mlm_lightning.__main__ import main

    # RoBERTa's position ids run from pad_token_id + 1: 129 position embeddings with padding index 0 (the test
    # tokenizer's [PAD], linked in) take 128 tokens.
    roberta = ["--model.model_type", "roberta", "--model.max_position_embeddings", "129"]
    args = [*tiny_args, *roberta, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
    root = tmp_path / "run"
    cache = Path(os.environ["MLM_LIGHTNING_CACHE"])
    assert main(["fit", *args, "--data.max_seq_length", "129"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert_one_line(err, "data.max_seq_length=129", "only 128 tokens", "roberta")
    assert not root.exists() and not any(cache.iterdir())  # nothing written: no logs, no tokenized corpus

    assert main(["inspect", *args, "--data.max_seq_length", "129"]) == 0  # the corpus report: the same rule
    assert "data.max_seq_length=129 is above the 128 tokens the model's position embeddings take" in (
        capsys.readouterr().err
    )
    assert main(["fit", *args, "--data.max_seq_length", "128"]) == 0
    assert (root / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_resume_schedule_given_when_resuming_is_the_one_used(
    tiny_args: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlm_lightning.__main__ import main

    # Not taken from the checkpoint's hyperparameters (LightningCLI copies those over the command line's).
    # Every validation's checkpoint is kept: the one of step 4 is mid-schedule (a finished schedule has nothing to
    # stretch: its learning rate is 0, and that is a warning of its own).
    args = [
        *tiny_args,
        "--trainer.max_steps",
        "8",
        "--trainer.val_check_interval",
        "4",
        "--checkpoint.save_top_k",
        "-1",
    ]
    assert main(["fit", *args]) == 0
    (mid,) = (tmp_path / "run" / "checkpoints").glob("*step4*.ckpt")  # a file: LightningCLI reads its hyperparameters
    resume = ["--trainer.max_steps", "12", "--ckpt_path", str(mid), "--model.resume_schedule", "stretch"]
    # An older checkpoint than the run's last.ckpt: branched into a folder of its own (the same folder is refused).
    branch = ["--trainer.default_root_dir", str(tmp_path / "branch")]
    assert main(["fit", *args, *resume, *branch]) == 0
    assert "schedule of the checkpoint (step 4) ended at step 8; its remaining decay now ends at step 12" in caplog.text
