"""Callbacks that tests load into ``python -m mlm_lightning fit`` subprocesses (``--trainer.callbacks+=...``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class LossRecorder(Callback):
    """Appends ``step,loss,batch digest`` for every training batch to a CSV file, durably (survives SIGKILL).

    Args:
        path: The CSV file.
        pause_at_step: After recording this step, touch ``<path>.paused`` and wait until killed or sent SIGTERM
            (0 = never).
    """

    def __init__(self, path: str, pause_at_step: int = 0) -> None:
        self.path = path
        self.pause_at_step = pause_at_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_
    ) -> None:
        digest = zlib.crc32(batch["input_ids"].numpy().tobytes())
        with open(self.path, "a") as fh:
            fh.write(f"{trainer.global_step},{float(outputs['loss'])!r},{digest}\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self.pause_at_step and trainer.global_step == self.pause_at_step:
            Path(f"{self.path}.paused").touch()
            deadline = time.monotonic() + 600
            while not trainer.received_sigterm and time.monotonic() < deadline:  # the test SIGKILLs or SIGTERMs us
                time.sleep(0.05)


def read_losses(path: Path) -> dict[int, tuple[float, int]]:
    """``{step: (loss, batch digest)}``; a step recorded twice (before a kill and after the resume) keeps the last."""
    rows = {}
    for line in path.read_text().splitlines():
        step, loss, digest = line.split(",")
        rows[int(step)] = (float(loss), int(digest))
    return rows


def sigkill_when(proc: subprocess.Popen, marker: Path, timeout: float = 600) -> None:
    """Waits until ``marker`` exists (the process reached the point to die at), then SIGKILLs ``proc``."""
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, f"exited before {marker.name} appeared"
            assert time.monotonic() < deadline, f"{marker.name} never appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


class MetricRecorder(Callback):
    """Keeps every value a metric had at the end of each validation of a run (``values``), for in-process tests.

    Args:
        name: The metric, e.g. ``val/loss``.
    """

    def __init__(self, name: str = "val/loss") -> None:
        self.name = name
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.name in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics[self.name]))


class RowRecorder(Callback):
    """Appends one line per training row to ``<path>.<rank>``: the epoch and a CRC of the row's unmasked ids.

    The ids are put back from the batch (a masked position's label is its original id), so the CRC is that of the
    row as stored in the shard (int64), padding removed.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_
    ) -> None:
        ids, labels = batch["input_ids"].clone(), batch["labels"]
        ids[labels != -100] = labels[labels != -100]
        mask = batch.get("attention_mask")
        with open(f"{self.path}.{trainer.global_rank}", "a") as fh:
            for row in range(len(ids)):
                kept = ids[row] if mask is None else ids[row][mask[row].bool()]
                fh.write(f"{trainer.current_epoch},{zlib.crc32(kept.numpy().tobytes())}\n")


ACTIONS: dict[int, Any] = {}  # step -> what CallAtStep calls after it (in-process runs only)


class CallAtStep(Callback):
    """After each training step that ``ACTIONS`` has an entry for, calls it (e.g. stops a test's S3 server)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_
    ) -> None:
        action = ACTIONS.pop(trainer.global_step, None)
        if action is not None:
            action()


def pause_tokenization(markers: str) -> None:
    """Makes every tokenizing process (the workers of ``data.num_proc``) touch ``<markers>/<pid>`` and wait there.

    For tests that signal a run while it tokenizes: run ``python -c`` with this before ``main``.
    """
    import mlm_lightning.data.cache as cache

    real = cache.tokenize_documents

    def wait(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        Path(markers, str(os.getpid())).touch()
        while True:  # until the test signals the parent, which stops this worker
            time.sleep(0.05)

    def tokenize_documents(docs: Any, tokenizer: Any, num_proc: int | None) -> Any:
        docs.map(wait, batched=True, num_proc=num_proc)
        return real(docs, tokenizer, num_proc)

    cache.tokenize_documents = tokenize_documents


def run_pausing_tokenization(args: list[str], markers: Path) -> subprocess.Popen:
    """``python -m mlm_lightning fit ARGS`` in a subprocess whose tokenization waits (:func:`pause_tokenization`)."""
    import sys

    root = Path(__file__).parents[1]
    code = (
        "import sys; from tests.helpers import pause_tokenization; pause_tokenization(sys.argv[1]); "
        "from mlm_lightning.__main__ import main; sys.exit(main(sys.argv[2:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-c", code, str(markers), "fit", *args]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition: Any, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    """Polls ``condition()`` until true (a marker file appeared, a process ended); fails if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"exited first: {proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not yet reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class PauseAt(Callback):
    """Touches ``marker`` at a point of a run and waits there until signalled (loaded into ``fit`` subprocesses).

    Args:
        marker: The file to touch.
        step: The optimizer step at which to pause.
        where: ``validation`` (after the first validation batch at ``step``) or ``save`` (while the checkpoint of
            ``step`` is being saved after a stop was asked for: the waiting ends with a second Ctrl-C).
    """

    def __init__(self, marker: str, step: int, where: str = "validation") -> None:
        self.marker, self.step, self.where = marker, step, where

    def _wait(self, until: Any) -> None:
        Path(self.marker).touch()
        deadline = time.monotonic() + 600
        while not until() and time.monotonic() < deadline:
            time.sleep(0.05)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.where == "validation" and trainer.global_step == self.step and not Path(self.marker).exists():
            self._wait(lambda: trainer.received_sigterm)

    def on_save_checkpoint(self, trainer: L.Trainer, *args: Any) -> None:
        if self.where == "save" and trainer.global_step == self.step and trainer.received_sigterm:
            self._wait(lambda: False)  # until a KeyboardInterrupt (the second Ctrl-C) ends it


def assert_one_line(lines: list[str], *facts: str, prefix: str = "error: ") -> None:
    """A user-facing message: exactly one line, starting with ``prefix``, that states each of ``facts`` (a setting,
    a number, a path, the command that fixes it), whatever the wording around them."""
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    missing = [fact for fact in facts if fact not in lines[0]]
    assert not missing, f"{lines[0]!r} does not state {missing}"


class RateRecorder(Callback):
    """Appends ``step,rate of each group`` before every training batch (the rates its update uses) to ``path``.

    Args:
        path: The CSV file.
        stop_after: Stop the run after this optimizer step (0 = never), as an interrupted run would.
    """

    def __init__(self, path: str, stop_after: int = 0) -> None:
        self.path = path
        self.stop_after = stop_after

    def on_train_batch_start(self, trainer: L.Trainer, *_: Any) -> None:
        rates = ",".join(repr(group["lr"]) for group in trainer.optimizers[0].param_groups)
        with open(self.path, "a") as fh:
            fh.write(f"{trainer.global_step},{rates}\n")

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        if self.stop_after and trainer.global_step == self.stop_after:
            trainer.should_stop = True
