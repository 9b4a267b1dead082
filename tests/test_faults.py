"""Faults during a run: a full disk while writing a checkpoint or an export, and SIGTERM (pre-emption)."""

from __future__ import annotations

import errno
import io
import signal
import time
from pathlib import Path

import pytest
import torch

from mlm_lightning import atomic, checkpoint_io
from mlm_lightning.__main__ import main
from tests.helpers import read_losses
from tests.test_resume import finish, start_fit, with_root


class FullDisk:
    """``open`` for the checkpoint writer that fails like a full disk on the ``fail_on``-th file for ``name``.

    The failing file gets ``keep`` bytes written, then ``OSError(ENOSPC)``, as a real full disk does.
    """

    def __init__(self, name: str, fail_on: int, keep: int = 32768) -> None:
        self.name, self.fail_on, self.keep, self.opened = name, fail_on, keep, 0

    def __call__(self, path: str | Path, mode: str = "r", *args, **kwargs) -> io.IOBase:
        fh = open(path, mode, *args, **kwargs)  # noqa: SIM115
        if "w" not in mode or self.name not in Path(path).name:
            return fh
        self.opened += 1
        if self.opened != self.fail_on:
            return fh
        keep = self.keep

        class Full(io.BufferedWriter):
            def write(self, data: bytes) -> int:
                nonlocal keep
                if len(data) > keep:
                    super().write(bytes(data)[:keep])
                    keep = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                keep -= len(data)
                return super().write(data)

        fh.close()
        return Full(io.FileIO(path, "wb"))


def test_disk_full_while_saving_a_checkpoint(tiny_args: list[str], tmp_path: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "run" / "checkpoints"
    saved: dict[str, bytes] = {}

    class Recorder(FullDisk):
        def __call__(self, path, mode="r", *args, **kwargs):
            if "w" in mode and "last.ckpt" in Path(path).name and (folder / "last.ckpt").is_file():
                saved.setdefault("last", (folder / "last.ckpt").read_bytes())  # the one the failing write replaces
            return super().__call__(path, mode, *args, **kwargs)

    # last.ckpt is written at step 4 (every 4 steps), then again at 6 (validation): that second write fails.
    monkeypatch.setattr(checkpoint_io, "open", Recorder("last.ckpt", fail_on=2), raising=False)
    assert main(["fit", *tiny_args, "--checkpoint.save_last_every_n_steps", "4"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err and "unexpected pos" not in err, err
    assert "disk full" in errors[0] and str(folder / "last.ckpt") in errors[0], errors[0]
    assert "previous last.ckpt is intact" in errors[0]
    assert (folder / "last.ckpt").read_bytes() == saved["last"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not list(folder.glob(".*")), "a temporary file was left behind"


def test_disk_full_while_exporting(trained_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a previous export, to be kept whole
    real = atomic._fsync_tree

    def full(folder: Path) -> None:
        if folder.name.startswith(".export.tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(folder)

    monkeypatch.setattr(atomic, "_fsync_tree", full)
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    args = ["export", "--ckpt_path", str(ckpt), "--output_dir", str(out), "--overwrite", "true"]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"disk full: could not write {out} (the previous export is intact)" in errors[0]
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (out / "config.json").read_text() == "{}"


@pytest.mark.slow
def test_sigterm_saves_last_and_exits_143_then_resume_continues_exactly(tiny_args: list[str], tmp_path: Path) -> None:
    # 12 steps, last.ckpt only at epoch ends and when asked: SIGTERM while step 5 ends -> last.ckpt of step 5.
    args = [*tiny_args, "--checkpoint.save_last_every_n_steps", "0"]
    run, last = with_root(args, tmp_path / "run"), tmp_path / "run" / "checkpoints" / "last.ckpt"
    whole = start_fit(with_root(args, tmp_path / "whole"), tmp_path / "whole.csv")
    part = start_fit([*run, "--ckpt_path", "last"], tmp_path / "part.csv", pause_at_step=5)
    try:
        marker = Path(f"{tmp_path / 'part.csv'}.paused")
        while not marker.exists():
            assert part.poll() is None, part.communicate()[0][-3000:]
            time.sleep(0.05)
        part.send_signal(signal.SIGTERM)
        out, _ = part.communicate(timeout=300)
    finally:
        if part.poll() is None:
            part.kill()
    assert part.returncode == 143, out[-3000:]
    message = [line for line in out.splitlines() if line.startswith("error: stopped by SIGTERM")]
    assert message and f"the last checkpoint is {last} (step 5)" in message[0], out[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert not list(last.parent.glob(".*")), "a temporary file was left behind"

    finish(start_fit([*run, "--ckpt_path", "last"], tmp_path / "rest.csv"))
    finish(whole)
    reference, rest = read_losses(tmp_path / "whole.csv"), read_losses(tmp_path / "rest.csv")
    assert sorted(read_losses(tmp_path / "part.csv")) == list(range(1, 6))
    assert sorted(rest) == list(range(6, 13))
    for step, value in rest.items():
        assert value == reference[step], step  # same batch, bit-identical loss
    final = torch.load(last, weights_only=True)
    expected = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch) -> None:
    monkeypatch.delenv("MLM_LIGHTNING_DEBUG", raising=False)
