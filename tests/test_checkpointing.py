"""Safe checkpoint files and run folders: atomic writes, unreadable checkpoints, another run's folder, the lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.callbacks.checkpoint import MLMCheckpoint
from mlm_lightning.errors import MLMError
from mlm_lightning.io.atomic import atomic_file, atomic_output_dir, remove_leftovers
from mlm_lightning.io.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from tests.helpers import sigkill_when

ROOT = Path(__file__).parents[1]

KILLED_WRITER = """
import sys, time, pathlib, torch
from mlm_lightning.io.checkpoint_io import AtomicCheckpointIO

class Stall:  # pickled in the middle of torch.save: the writer is killed while the new file is incomplete
    def __reduce__(self):
        pathlib.Path(sys.argv[2]).touch()
        time.sleep(600)

AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 2, "stall": Stall()}, sys.argv[1])
"""


def test_atomic_file_keeps_the_previous_version_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.json"
    with atomic_file(target) as tmp:
        tmp.write_text("first")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half of the sec")
        raise RuntimeError("disk full")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]
    plain = tmp_path / "plain.json"
    plain.write_text("x")
    assert target.stat().st_mode == plain.stat().st_mode  # not mkstemp's private 0600


def test_atomic_output_dir_swaps_whole_folders(tmp_path: Path) -> None:
    # test_export.py covers the failure path; here: replacing, and the folder's mode.
    target = tmp_path / "export"
    with atomic_output_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "c.txt").write_text("c")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert target.stat().st_mode == plain.stat().st_mode  # not mkdtemp's private 0700


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, target)
    marker = tmp_path / "writing"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sigkill_when(subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(marker)], env=env), marker)
    assert read_checkpoint(target, weights_only=True)["global_step"] == 1
    leftovers = [p.name for p in tmp_path.glob(".last.ckpt.tmp-*")]
    assert len(leftovers) == 1  # the killed write, under a hidden name
    assert [p.name for p in remove_leftovers(tmp_path)] == leftovers and not list(tmp_path.glob(".*"))


def test_unreadable_checkpoints_are_named(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 3}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    io = AtomicCheckpointIO()
    assert io.load_checkpoint(good, weights_only=True)["global_step"] == 3
    for name, message in [
        ("truncated.ckpt", "not a complete checkpoint"),
        ("text.ckpt", "not a complete checkpoint"),
        ("list.ckpt", "not a Lightning checkpoint"),
        ("missing.ckpt", "no such checkpoint file"),
    ]:
        with pytest.raises(MLMError, match=message) as info:
            io.load_checkpoint(tmp_path / name, weights_only=True)
        assert str(tmp_path / name) in str(info.value)


def test_save_last_link_is_replaced_atomically(tmp_path: Path) -> None:
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    best.write_text("best")
    last.write_text("an older last")
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda *a: None))
    MLMCheckpoint._link_checkpoint(trainer, str(best), str(last))
    assert last.is_symlink() and last.read_text() == "best"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_run_folder_belongs_to_one_run(tiny_args: list[str], tmp_path: Path, capsys) -> None:
    args = [*tiny_args, "--trainer.max_steps", "3", "--trainer.val_check_interval", "3"]
    assert main(["fit", *args]) == 0
    folder = tmp_path / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert "last.ckpt" in before
    capsys.readouterr()

    # A new run into the same folder: refused before it writes anything.
    assert main(["fit", *args]) == 2
    assert "already holds checkpoints of another run" in capsys.readouterr().err
    # A resume with a model of another shape: one message naming both values, not a state_dict traceback.
    assert main(["fit", *args, "--model.hidden_size", "16", "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert "model.hidden_size is 16 but the checkpoint" in err and "has 32" in err and "Traceback" not in err
    # While another process holds the folder, a second run (even a resume) is refused.
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["fit", *args, "--trainer.max_steps", "4", "--ckpt_path", "last"]) == 2
        assert "another run is writing checkpoints" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    (folder / ".last.ckpt.tmp-x1y2z3").write_bytes(b"half a checkpoint")  # left by a killed write
    assert main(["fit", *args, "--trainer.max_steps", "4", "--ckpt_path", "last"]) == 0
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not list(folder.glob(".*"))
