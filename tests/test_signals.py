"""Signals never lose work: SIGTERM or Ctrl-C while tokenizing, in a validation, or twice while saving (issue 19).

Each test runs ``python -m mlm_lightning fit`` in a subprocess and signals it at a point it reports through a marker
file (never after a fixed time).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from mlm_lightning.data import MLMDataModule
from tests.helpers import alive, read_losses, run_pausing_tokenization, wait_for
from tests.test_resume import finish, start_fit, with_root

pytestmark = pytest.mark.slow


def _signal_while_tokenizing(tiny_args: list[str], tmp_path: Path, signum: int) -> tuple[int, str, list[int], Path]:
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = run_pausing_tokenization([*tiny_args, "--data.num_proc", "2"], markers)
    try:
        wait_for(lambda: len(list(markers.iterdir())) >= 2, proc)  # both workers are tokenizing
        workers = [int(p.name) for p in markers.iterdir()]
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=60)  # no orphan left running
    return proc.returncode, out, workers, Path(os.environ["MLM_LIGHTNING_CACHE"]) / "corpora"


@pytest.mark.parametrize(
    ("signum", "status", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_signal_while_tokenizing_is_one_line_and_leaves_nothing(
    tiny_args: list[str], tmp_path: Path, signum: int, status: int, name: str
) -> None:
    code, out, _, corpora = _signal_while_tokenizing(tiny_args, tmp_path, signum)
    assert code == status, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"stopped by {name}" in errors[0] and "while tokenizing" in errors[0], out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not list(corpora.iterdir()), "a work folder was left in the cache"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sigkill_while_tokenizing_kills_the_workers_and_the_next_run_cleans_up(
    tiny_args: list[str], tmp_path: Path, corpus_file: Path, tokenizer_dir: Path
) -> None:
    code, _, _, corpora = _signal_while_tokenizing(tiny_args, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert [p.name.startswith(".") for p in corpora.iterdir()] == [True]  # its work folder, left by the kill
    data = MLMDataModule(train_files=[str(corpus_file)], tokenizer=str(tokenizer_dir), text_layout="line")
    data.prepare_data()
    assert [p.name.startswith(".") for p in corpora.iterdir()] == [False]  # only the finished entry


def _pause(marker: Path, step: int, where: str) -> str:
    init = {"marker": str(marker), "step": step, "where": where}
    return f"--trainer.callbacks+={json.dumps({'class_path': 'tests.helpers.PauseAt', 'init_args': init})}"


def _stop(proc, marker: Path, *signals: int) -> str:
    """Sends the signals in turn, each once ``marker`` exists (removed in between); returns the output."""
    try:
        for signum in signals:
            wait_for(marker.exists, proc)
            marker.unlink()
            proc.send_signal(signum)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


def test_sigterm_in_a_validation_saves_the_step_before_it_and_resume_continues_exactly(
    tiny_args: list[str], tmp_path: Path
) -> None:
    # 12 steps, validation at 6 and 12, last.ckpt only at epoch ends and when stopped: SIGTERM in the validation of
    # step 6 -> last.ckpt of step 6 (before: "no checkpoint was saved", steps 1-6 lost).
    args = [*tiny_args, "--checkpoint.save_last_every_n_steps", "0"]
    run, last = with_root(args, tmp_path / "run"), tmp_path / "run" / "checkpoints" / "last.ckpt"
    whole = start_fit(with_root(args, tmp_path / "whole"), tmp_path / "whole.csv")
    marker = tmp_path / "in-validation"
    part = start_fit([*run, _pause(marker, 6, "validation")], tmp_path / "part.csv")
    out = _stop(part, marker, signal.SIGTERM)
    assert part.returncode == 143, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"the last checkpoint is {last} (step 6)" in errors[0], out[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 6

    finish(start_fit([*run, "--ckpt_path", "last"], tmp_path / "rest.csv"))
    finish(whole)
    reference, rest = read_losses(tmp_path / "whole.csv"), read_losses(tmp_path / "rest.csv")
    assert sorted(rest) == list(range(7, 13))
    for step, value in rest.items():
        assert value == reference[step], step  # same batch, bit-identical loss: nothing lost, nothing twice


def test_ctrl_c_in_fit_saves_the_current_step_and_says_how_to_resume(tiny_args: list[str], tmp_path: Path) -> None:
    args = with_root([*tiny_args, "--checkpoint.save_last_every_n_steps", "0"], tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = start_fit(args, tmp_path / "losses.csv", pause_at_step=5)
    out = _stop(proc, Path(f"{tmp_path / 'losses.csv'}.paused"), signal.SIGINT)
    assert proc.returncode == 130, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "stopped by Ctrl-C (SIGINT) (fit at step 5)" in errors[0], out[-3000:]
    assert f"the last checkpoint is {last} (step 5): continue with --ckpt_path last" in errors[0]
    assert "KeyboardInterrupt" not in out and "Traceback" not in out, out[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 5


def test_a_second_ctrl_c_while_saving_keeps_last_ckpt_whole(tiny_args: list[str], tmp_path: Path) -> None:
    args = with_root([*tiny_args, "--checkpoint.save_last_every_n_steps", "2"], tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    marker = tmp_path / "saving"
    proc = start_fit([*args, _pause(marker, 5, "save")], tmp_path / "losses.csv", pause_at_step=5)
    paused = Path(f"{tmp_path / 'losses.csv'}.paused")
    try:
        wait_for(paused.exists, proc)
        proc.send_signal(signal.SIGINT)  # the first: stop after step 5, saving it
    except BaseException:
        proc.kill()
        raise
    out = _stop(proc, marker, signal.SIGINT)  # the second, while that checkpoint is being saved
    assert proc.returncode == 130, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "a second Ctrl-C" in errors[0] and f"{last} (step 4)" in errors[0], out[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the previous one, whole
    assert not list(last.parent.glob(".*")), "a temporary file was left behind"
