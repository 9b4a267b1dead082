"""Signals never lose work: SIGTERM or Ctrl-C while tokenizing, in a validation, or twice while saving (issue 19).

Each test runs ``python -m mlm_lightning fit`` in a subprocess and signals it at a point it reports through a marker
file (never after a fixed time).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mlm_lightning.data import MLMDataModule
from tests.helpers import alive, run_pausing_tokenization, wait_for

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
