"""What a person reads: no library noise, a progress bar in optimizer steps, one line per validation, final
metrics for every run, and an export that never replaces another run's."""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

NOISE = [
    "LeafSpec",  # torch's deprecation, raised inside Lightning
    "litlogger",  # Lightning's advertisement
    "FLOPs",  # the model summary's column of zeros and "Total FLOPs: 0"
    "Downloading data",  # datasets' progress bars for files on this disk
    "Generating train split",
    "drop blank documents",
    "examples/s",  # any datasets progress bar, tokenization's included (a small corpus, output not a terminal)
    "LightningCLI's args parameter",
    "exists and is not empty",  # the documented resume
    "GPU available: False",
    "TPU available: False",
    "v_num",
    "Epoch 0/",
    "not supported by the model summary",  # every bf16-mixed run; the size at 32 bits is right (fp32 weights)
    "Automatic Mixed Precision",
    "`Trainer.fit` stopped",  # the end the run was configured for
    "measuring this CPU",  # the MFU probe: the debug log only
]


def _without_progress_flag(args: list[str]) -> list[str]:
    i = args.index("--trainer.enable_progress_bar")
    return args[:i] + args[i + 2 :]


def _fit(args: list[str]) -> list[str]:
    """Runs ``fit`` in this process and returns the warnings it let through."""
    from mlm_lightning.__main__ import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", *args]) == 0
    return [str(w.message) for w in caught]


def test_a_fit_prints_no_library_noise_and_one_line_per_validation(
    tiny_args: list[str], capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["pytest", "tests"])  # words in sys.argv as well as args: a warning before
    args = _without_progress_flag(tiny_args) + ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2"]
    args += ["--trainer.precision", "bf16-mixed"]  # base.yaml's choice on a bf16 CPU, with messages of its own
    # Lightning's log handler keeps the stderr of its first import (another test's capture in a full run):
    # read its messages through a handler of our own as well.
    lightning_log = io.StringIO()
    handler = logging.StreamHandler(lightning_log)
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        caught = _fit(args)
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    out, err = capfd.readouterr()
    err += lightning_log.getvalue()
    for text in NOISE:
        assert text not in out and text not in err, text
        assert not any(text in message for message in caught), text
    # Output is not a terminal here: no bar, one plain line per validation, at the optimizer step.
    lines = [line for line in out.splitlines() if line.startswith("step ") and "val/" in line]
    assert [line.split("  ")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert all("val/loss " in line and "val/perplexity " in line and "val/accuracy " in line for line in lines)
    # ... and a progress line every log_every_n_steps (2 here): step, training loss, tokens/s, time elapsed and left.
    progress = [line for line in out.splitlines() if line.startswith("step ") and "val/" not in line]
    assert [line.split("  ")[0] for line in progress] == ["step 2/4", "step 4/4"], out
    assert all(
        re.search(r"train/loss \d+\.\d{4}  [\d,]+ tokens/s  [\dhms ]+ elapsed, about [\dhms ]+ left$", p)
        for p in progress
    ), progress
    assert "\r" not in out and "it/s" not in out
    assert "Total params" in err  # the model summary is still there, without its FLOPs


@pytest.mark.slow
def test_resumed_run_counts_steps_validates_at_its_end_and_replaces_its_own_export(
    tiny_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mlm_lightning.cli.lightning_cli import run_cli

    root = tmp_path / "run"
    args = [*tiny_args, "--trainer.val_check_interval", "4", "--export.enabled", "true"]
    assert run_cli(["fit", *args, "--trainer.max_steps", "4"]).trainer.global_step == 4
    # In a terminal: one bar counting optimizer steps to max_steps, from where the checkpoint ended.
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    # (The export is of the last checkpoint: with model.resume_schedule keep, steps 5-6 run at the schedule's final
    # learning rate, so the best checkpoint may stay the one of step 4.)
    resume = ["fit", *_without_progress_flag(args), "--trainer.max_steps", "6", "--ckpt_path", "last"]
    resume += ["--export.checkpoint", "last"]
    cli = run_cli(resume)
    bar = cli.trainer.progress_bar_callback.train_progress_bar
    assert (bar.desc, bar.total, bar.initial, bar.n) == ("step", 6, 4, 6)
    # Step 6 is not a multiple of val_check_interval 4, and still the run ends with its metrics:
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6 and set(last["mlm_lightning"]["val_metrics"]) >= {"val/loss", "val/accuracy"}
    assert "step 6/6  val/loss" in capsys.readouterr().out
    events = EventAccumulator(str(root / "lightning_logs" / "version_1"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [6]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert [e.step for e in events.Tensors("data/corpus_report/text_summary")] == [4]  # where this run starts
    # Same run, so its own export is replaced: the model card now names step 6.
    assert "| optimizer steps | 6 |" in (root / "export" / "README.md").read_text()


def test_a_new_run_does_not_replace_an_earlier_export(tiny_args: list[str], tmp_path: Path, capsys) -> None:
    from mlm_lightning.__main__ import main

    earlier = tmp_path / "earlier-export"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    assert main(["fit", *tiny_args, "--export.enabled", "true", "--export.output_dir", str(earlier)]) == 2
    err = capsys.readouterr().err
    assert f"{earlier} already exists" in err and "export.overwrite" in err
    assert (earlier / "config.json").read_text() == "{}"
    assert not (tmp_path / "run" / "checkpoints").exists()  # found out before training


def test_no_progress_bar_and_no_model_summary_when_switched_off(tiny_args: list[str]) -> None:
    from lightning.pytorch.callbacks import ModelSummary, ProgressBar

    from mlm_lightning.cli.lightning_cli import run_cli

    args = [*tiny_args, "--trainer.enable_model_summary", "false"]  # run=False: no subcommand
    callbacks = run_cli(args, run=False).trainer.callbacks
    assert not [c for c in callbacks if isinstance(c, (ProgressBar, ModelSummary))]


def test_lightning_info_lines_without_news_are_dropped() -> None:
    from mlm_lightning.quiet import _INFO_LINES, _DropInfoLines

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, message, None, None)

    drop = _DropInfoLines(_INFO_LINES)
    assert not drop.filter(record("Using bfloat16 Automatic Mixed Precision (AMP)"))  # once per model in evaluate
    assert not drop.filter(record("GPU available: False, used: False"))
    assert drop.filter(record("trainer.precision: bf16-mixed (this CPU computes bf16 natively (avx512_bf16); ...)"))


def test_progress_line_reads_as_a_sentence() -> None:
    from mlm_lightning.callbacks.console import duration, progress_line

    assert [duration(s) for s in (0.4, 42, 185, 3725)] == ["0s", "42s", "3m 05s", "1h 02m"]
    assert progress_line(10, 300, 7.12344, 2345.4, 100.0, 2900.0) == (
        "step 10/300  train/loss 7.1234  2,345 tokens/s  1m 40s elapsed, about 48m 20s left"
    )
    assert progress_line(5, None, None, None, 3.0, None) == "step 5  3s elapsed"


def test_plain_progress_prints_every_log_every_n_steps(capsys: pytest.CaptureFixture) -> None:
    from types import SimpleNamespace

    from mlm_lightning.callbacks.console import StepProgressBar

    bar = StepProgressBar()
    bar._plain = True
    trainer = SimpleNamespace(
        is_global_zero=True, global_step=0, log_every_n_steps=2, world_size=1, max_steps=4,
        callback_metrics={"train/loss": torch.tensor(6.5)},
    )  # fmt: skip
    bar._start, bar._window, bar._printed_step = (0.0, 0), [0.0, 0.0], 0
    batch = {"input_ids": torch.ones(2, 8, dtype=torch.long), "num_tokens": 16, "num_token_pairs": 128}
    for step in (1, 2, 2, 3, 4):  # step 2 twice: gradient accumulation, one optimizer step over two batches
        trainer.global_step = step
        bar._plain_progress(trainer, batch)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert all(" tokens/s  " in line and "train/loss 6.5000" in line and " left" in line for line in lines)
