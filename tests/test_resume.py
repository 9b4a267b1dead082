"""Exact resume after SIGKILL, and run-to-run determinism (CPU, fp32, fixed seed, dropout on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import read_losses

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
    # 7 batches per epoch, 20 steps (epochs 0-2), last.ckpt every 4 steps and at epoch ends, validation every 6
    # steps, dropout 0.1. The run is SIGKILLed after step 13, so it resumes from last.ckpt of step 12 (epoch 1,
    # 5 batches in) and redoes step 13. Between that checkpoint and step 13 the uninterrupted run validates
    # (which the resumed run skips), and an epoch change (step 14) and validation (step 18) follow.
    args = [*tiny_args, "--trainer.max_steps", "20", "--trainer.limit_train_batches", "7"]
    args += ["--checkpoint.save_last_every_n_steps", "4"]
    whole = start_fit(with_root(args, tmp_path / "whole"), tmp_path / "whole.csv")
    killed = start_fit(with_root(args, tmp_path / "run"), tmp_path / "killed.csv", pause_at_step=13)
    try:
        deadline = time.monotonic() + 600
        while not (tmp_path / "killed.csv.paused").exists():
            assert killed.poll() is None, killed.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the run never reached step 13"
            time.sleep(0.1)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finally:
        if killed.poll() is None:
            killed.kill()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 12
    assert not list(last.parent.glob(".*")), "a temporary file was left behind"

    resumed = start_fit([*with_root(args, tmp_path / "run"), "--ckpt_path", "last"], tmp_path / "resumed.csv")
    finish(resumed)
    finish(whole)

    reference = read_losses(tmp_path / "whole.csv")
    before_kill = read_losses(tmp_path / "killed.csv")
    after_resume = read_losses(tmp_path / "resumed.csv")
    assert sorted(reference) == list(range(1, 21))
    assert sorted(before_kill) == list(range(1, 14))
    assert sorted(after_resume) == list(range(13, 21))  # no batch skipped, none trained twice
    for step in range(1, 14):
        assert before_kill[step] == reference[step], step
    for step in range(13, 21):
        assert after_resume[step] == reference[step], step  # same batch (digest) and bit-identical loss

    final = torch.load(last, weights_only=True)
    expected = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == 20
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name


def test_same_seed_and_config_give_the_same_final_validation_loss(tiny_args: list[str], tmp_path: Path) -> None:
    from mlm_lightning.cli import run_cli

    args = [*tiny_args, "--trainer.max_steps", "6", "--trainer.val_check_interval", "6"]

    def final_val_loss(name: str, *extra: str) -> float:
        trainer = run_cli(["fit", *with_root(args, tmp_path / name), *extra]).trainer
        return trainer.callback_metrics["val/loss"].item()

    first, second = final_val_loss("a"), final_val_loss("b")
    assert first == second
    assert final_val_loss("c", "--seed_everything", "7") != first  # the seed matters: the check can fail
