"""Domain adaptation that proves itself: validation before the first step, named validation sets, before/after."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.callbacks import ValidateBeforeFit
from mlm_lightning.callbacks.console import validation_line
from mlm_lightning.tools.report import before_after_table
from tests.conftest import named_sets as _named_sets


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_named_sets_are_logged_from_step_0_and_the_monitor_skips_it(adapted_run: Path) -> None:
    (version,) = (adapted_run / "lightning_logs").iterdir()
    events = _events(version)
    tags = set(events.Tags()["scalars"])
    assert "val/loss" not in tags  # a mapping replaces the unnamed tags
    for name in ("domain", "general"):
        losses = events.Scalars(f"val/{name}/loss")
        assert [e.step for e in losses] == [0, 6, 12]  # step 0: the base model, before any step
        for loss, ppl in zip(losses, events.Scalars(f"val/{name}/perplexity")):
            assert ppl.value == pytest.approx(math.exp(loss.value), rel=1e-5)
        assert len(events.Scalars(f"val/{name}/accuracy")) == 3
    names = sorted(p.name for p in (adapted_run / "checkpoints").glob("epoch*.ckpt"))
    assert len(names) == 1 and "-val_domain_loss" in names[0] and "step0-" not in names[0]  # monitor: the first set
    last = torch.load(adapted_run / "checkpoints" / "last.ckpt", weights_only=False)
    base = last["mlm_lightning"]["base_metrics"]
    assert base["val/domain/loss"] == pytest.approx(events.Scalars("val/domain/loss")[0].value, rel=1e-6)
    assert base["val/general/accuracy"] == pytest.approx(events.Scalars("val/general/accuracy")[0].value, rel=1e-6)


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_model_card_shows_base_and_adapted_side_by_side(adapted_run: Path) -> None:
    (best,) = (adapted_run / "checkpoints").glob("epoch*.ckpt")
    ckpt = torch.load(best, weights_only=False)
    base, after = ckpt["mlm_lightning"]["base_metrics"], ckpt["mlm_lightning"]["val_metrics"]
    card = (adapted_run / "export" / "README.md").read_text()
    assert "## Before and after" in card
    row = next(line for line in card.splitlines() if line.startswith("| perplexity |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    expected = [base["val/domain/perplexity"], after["val/domain/perplexity"]]
    expected += [base["val/general/perplexity"], after["val/general/perplexity"]]
    assert cells == [f"{v:.2f}" for v in expected]
    assert f"| validation loss (general) | {after['val/general/loss']:.4f} |" in card


def test_before_after_table_by_hand() -> None:
    base = {"val/loss": 2.0, "val/perplexity": math.exp(2.0), "val/accuracy": 0.25}
    after = {"val/loss": 1.5, "val/perplexity": math.exp(1.5), "val/accuracy": 0.375, "val/word_loss": 3.0}
    lines = before_after_table(base, after, 300).splitlines()
    assert lines[2] == "| | validation: base model (step 0) | validation: adapted (step 300) |"
    assert lines[4:] == ["| loss | 2.0000 | 1.5000 |", "| perplexity | 7.39 | 4.48 |",
                         "| masked-token accuracy | 25.00% | 37.50% |"]  # fmt: skip


def test_validation_line_lists_every_set() -> None:
    metrics = {"train/loss": 3.0, "val/a/loss": 1.0, "val/a/perplexity": math.e, "val/a/accuracy": 0.5}
    metrics |= {"val/b/loss": 2.0, "val/b/perplexity": math.exp(2), "val/b/accuracy": 0.25, "step": 4}
    trainer = SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()}, max_steps=8,
                              global_step=4)  # fmt: skip
    assert validation_line(trainer) == (
        "step 4/8  val/a/loss 1.0000  val/a/perplexity 2.72  val/a/accuracy 0.5000  "
        "val/b/loss 2.0000  val/b/perplexity 7.39  val/b/accuracy 0.2500"
    )


def test_validation_before_fit_is_on_for_a_pretrained_model_only() -> None:
    pretrained = SimpleNamespace(hparams={"model_name_or_path": "pkg://x/model"})
    scratch = SimpleNamespace(hparams={"model_name_or_path": None})
    assert ValidateBeforeFit().wanted(pretrained) and not ValidateBeforeFit().wanted(scratch)
    assert ValidateBeforeFit(enabled=True).wanted(scratch) and not ValidateBeforeFit(enabled=False).wanted(pretrained)


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_the_monitor_never_picks_the_base_model(tiny_args: list[str], tmp_path: Path) -> None:
    # mode max: the untrained weights have the highest loss, so a step-0 checkpoint would be "best".
    from mlm_lightning.cli.lightning_cli import run_cli

    args = [*tiny_args, "--validate_before_fit.enabled", "true", "--checkpoint.mode", "max"]
    cli = run_cli(["fit", *args])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and torch.load(best, weights_only=False)["global_step"] > 0
    assert not list((tmp_path / "run" / "checkpoints").glob("*step0-*"))


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_validating_first_changes_nothing_in_training(tiny_args: list[str], tmp_path: Path) -> None:
    from mlm_lightning.cli.lightning_cli import run_cli

    def run(name: str, enabled: str) -> tuple[list[float], float, list[float]]:
        recorder = {"class_path": "tests.helpers.MetricRecorder", "init_args": {"name": "val/loss"}}
        args = [*tiny_args, "--trainer.default_root_dir", str(tmp_path / name), "--trainer.max_steps", "6"]
        args += ["--validate_before_fit.enabled", enabled, "--trainer.callbacks+", json.dumps(recorder)]
        cli = run_cli(["fit", *args])
        values = next(c for c in cli.trainer.callbacks if type(c).__name__ == "MetricRecorder").values
        weights = [float(p.double().sum()) for p in cli.model.parameters()]
        return weights, float(cli.trainer.callback_metrics["train/loss"]), values

    with_first, loss_a, vals_a = run("a", "true")
    without, loss_b, vals_b = run("b", "false")
    assert with_first == without and loss_a == loss_b  # same weights after 6 steps: training untouched
    assert len(vals_a) == len(vals_b) + 1 and vals_a[1:] == vals_b  # one more validation, first, same after


@pytest.mark.slow
def test_a_resumed_run_does_not_validate_first_again(tiny_args: list[str], tmp_path: Path) -> None:
    root = tmp_path / "run"
    args = [*tiny_args, "--validate_before_fit.enabled", "true"]
    assert main(["fit", *args, "--trainer.max_steps", "6"]) == 0
    first = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["mlm_lightning"]["base_metrics"]
    assert [e.step for e in _events(root / "lightning_logs" / "version_0").Scalars("val/loss")] == [0, 6]
    assert main(["fit", *args, "--trainer.max_steps", "12", "--ckpt_path", "last"]) == 0
    assert [e.step for e in _events(root / "lightning_logs" / "version_1").Scalars("val/loss")] == [12]
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["mlm_lightning"]
    assert last["base_metrics"] == first  # the base model's figures travel with the run, for the model card


def test_named_set_settings_are_checked(tiny_args: list[str], general_file: Path, capsys) -> None:
    bad = [
        (["--data.val_files", "{}"], "empty mapping"),
        (["--data.val_files", json.dumps({"a b": [str(general_file)]})], "letters, digits"),
        ([*_named_sets(general_file), "--checkpoint.monitor", "val/loss_x"], "not a validation metric"),
        ([*_named_sets(general_file), "--checkpoint.monitor", "val/other/loss"], "val/domain/loss, val/general/loss"),
        (["--data.val_files", json.dumps({"a": None}), "--data.val_fraction", "0"], "held out"),
    ]
    for extra, words in bad:
        assert main(["fit", *tiny_args, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err, err


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_monitor_can_watch_another_set(tiny_args: list[str], general_file: Path, tmp_path: Path) -> None:
    from mlm_lightning.cli.lightning_cli import run_cli

    args = [*tiny_args, *_named_sets(general_file), "--checkpoint.monitor", "val/general/perplexity"]
    cli = run_cli(["fit", *args, "--trainer.max_steps", "6"])
    assert cli.trainer.checkpoint_callback.monitor == "val/general/perplexity"
    (best,) = (tmp_path / "run" / "checkpoints").glob("epoch*.ckpt")
    assert "val_general_perplexity" in best.name
