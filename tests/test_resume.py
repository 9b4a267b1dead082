"""Exact resume after SIGKILL, and run-to-run determinism (CPU, fp32, fixed seed, dropout on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import read_losses, sigkill_when

ROOT = Path(__file__).parents[1]


def with_root(args: list[str], root: Path) -> list[str]:
    args = list(args)
    args[args.index("--trainer.default_root_dir") + 1] = str(root)
    return args


def start_fit(args: list[str], losses: Path, pause_at_step: int = 0) -> subprocess.Popen:
    recorder = {"class_path": "tests.helpers.LossRecorder", "init_args": {"path": str(losses)}}
    if pause_at_step:
        recorder["init_args"]["pause_at_step"] = pause_at_step
    cmd = [sys.executable, "-m", "mlm_lightning", "fit", *args, f"--trainer.callbacks+={json.dumps(recorder)}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tiny_args: list[str], tmp_path: Path) -> None:
    # 7 batches per epoch, 20 steps (epochs 0-2), last.ckpt every 4 steps, validation every 6 steps, dropout
    # 0.1. One uninterrupted run, and one SIGKILLed three times, each time resuming with --ckpt_path last from
    # a different kind of checkpoint and redoing the lost step:
    # * killed after step 13: last.ckpt of step 12, written after that step's validation (new best);
    # * killed after step 15: last.ckpt of step 14, the epoch's last batch (in the uninterrupted run the next
    #   step opens a new epoch);
    # * killed after step 17: last.ckpt of step 16, the every-4-steps save in the middle of epoch 2.
    args = [*tiny_args, "--trainer.max_steps", "20", "--trainer.limit_train_batches", "7"]
    args += ["--checkpoint.save_last_every_n_steps", "4"]
    run, last = with_root(args, tmp_path / "run"), tmp_path / "run" / "checkpoints" / "last.ckpt"
    whole = start_fit(with_root(args, tmp_path / "whole"), tmp_path / "whole.csv")
    parts = []
    kills = [(13, 12), (15, 14), (17, 16)]  # (killed after step, step of the last.ckpt it resumes from)
    for kill_after, saved in kills:
        part = tmp_path / f"until{kill_after}.csv"
        sigkill_when(start_fit([*run, "--ckpt_path", "last"], part, pause_at_step=kill_after), Path(f"{part}.paused"))
        assert torch.load(last, weights_only=True)["global_step"] == saved
        assert not list(last.parent.glob(".*")), "a temporary file was left behind"
        parts.append((part, saved))
    finish(start_fit([*run, "--ckpt_path", "last"], tmp_path / "rest.csv"))
    finish(whole)

    reference = read_losses(tmp_path / "whole.csv")
    assert sorted(reference) == list(range(1, 21))
    # Each part starts right after the checkpoint it resumed from: no batch skipped, none trained twice.
    starts = [1] + [saved + 1 for _, saved in kills]
    ends = [kill_after for kill_after, _ in kills] + [20]
    for path, first, end in zip([p for p, _ in parts] + [tmp_path / "rest.csv"], starts, ends):
        rows = read_losses(path)
        assert sorted(rows) == list(range(first, end + 1)), path.name
        for step in rows:
            assert rows[step] == reference[step], (path.name, step)  # same batch (digest), bit-identical loss

    final = torch.load(last, weights_only=True)
    expected = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == 20
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_same_seed_and_config_give_the_same_final_validation_loss(tiny_args: list[str], tmp_path: Path) -> None:
    from mlm_lightning.cli.lightning_cli import run_cli

    args = [*tiny_args, "--trainer.max_steps", "6", "--trainer.val_check_interval", "6"]

    def final_val_loss(name: str, *extra: str) -> float:
        trainer = run_cli(["fit", *with_root(args, tmp_path / name), *extra]).trainer
        return trainer.callback_metrics["val/loss"].item()

    first, second = final_val_loss("a"), final_val_loss("b")
    assert first == second
    assert final_val_loss("c", "--seed_everything", "7") != first  # the seed matters: the check can fail
