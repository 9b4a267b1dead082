"""The learning rate: one pure function of (step, plan), written by one scheduler; optimizer settings by the config."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.training.optim import build_adamw
from mlm_lightning.training.schedule import Plan, PlannedLR, ScheduleSettings, plan_schedule, rate


def old_multiplier(record: dict[str, Any]) -> Callable[[float], float]:
    """The multiplier as the module computed it before ``training.schedule``: transformers' schedule lambdas, held at
    the end and stretched (a copy of the old ``MLMModule._lr_lambda`` and ``_lr_multiplier``)."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
        get_wsd_schedule,
    )

    probe = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    warmup, total = record["warmup_steps"], record["base_total"]
    if record["scheduler"] == "linear":
        base = get_linear_schedule_with_warmup(probe, warmup, total)
    elif record["scheduler"] == "cosine":
        base = get_cosine_schedule_with_warmup(probe, warmup, total)
    elif record["scheduler"] == "wsd":
        base = get_wsd_schedule(probe, warmup, record["decay_steps"], num_training_steps=total, decay_type="1-sqrt")
    else:
        base = get_constant_schedule_with_warmup(probe, warmup)
    shape, end = base.lr_lambdas[0], record["total_steps"]

    def multiplier(step: float) -> float:
        s = float(min(step, end))
        for anchor, old_end, new_end in reversed(record["stretches"]):
            if s > anchor:
                s = anchor + (s - anchor) * (old_end - anchor) / (new_end - anchor)
        return shape(s)

    return multiplier


RECORDS = [
    {"scheduler": "linear", "warmup_steps": 4, "base_total": 40, "stretches": [], "total_steps": 40},
    {"scheduler": "linear", "warmup_steps": 0, "base_total": 7, "stretches": [], "total_steps": 7},
    {"scheduler": "linear", "warmup_steps": 2, "base_total": 10, "stretches": [[4, 10, 20], [12, 20, 33]],
     "total_steps": 33},
    {"scheduler": "cosine", "warmup_steps": 3, "base_total": 50, "stretches": [], "total_steps": 50},
    {"scheduler": "cosine", "warmup_steps": 3, "base_total": 17, "stretches": [[5, 17, 29]], "total_steps": 29},
    {"scheduler": "constant", "warmup_steps": 6, "base_total": 30, "stretches": [], "total_steps": 30},
    {"scheduler": "wsd", "warmup_steps": 5, "base_total": 60, "stretches": [], "total_steps": 60, "decay_steps": 12},
    {"scheduler": "wsd", "warmup_steps": 8, "base_total": 8, "stretches": [], "total_steps": 8, "decay_steps": 0},
    {"scheduler": "wsd", "warmup_steps": 2, "base_total": 21, "stretches": [[9, 21, 40]], "total_steps": 40,
     "decay_steps": 7},
]  # fmt: skip


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"{r['scheduler']}-{r['base_total']}-{len(r['stretches'])}")
def test_the_rate_is_the_old_formula_at_every_step(record: dict[str, Any]) -> None:
    # An unchanged run trains with the same rate, to the last bit, as before the schedule became a function.
    peak = 7.3e-4
    plan = Plan.from_record(record, peak)
    old = old_multiplier(record)
    steps = [*range(record["total_steps"] + 4), *(s / 4 for s in range(4 * record["total_steps"]))]
    assert [rate(step, plan) for step in steps] == [peak * old(step) for step in steps]
    assert plan.record() == record  # what checkpoints hold, as they held it


def test_new_plans_are_those_of_the_settings() -> None:
    wsd = plan_schedule(ScheduleSettings(learning_rate=1e-3, scheduler="wsd", warmup_ratio=0.1), total=100)
    assert (wsd.warmup_steps, wsd.decay_steps, wsd.base_total, wsd.total_steps) == (10, 20, 100, 100)
    linear = plan_schedule(ScheduleSettings(learning_rate=1e-3, warmup_steps=3), total=9)
    assert linear == Plan("linear", 1e-3, 3, 9, 9)
    # A resume keeps the checkpoint's shape at this run's peak, or stretches it from the step it resumes at.
    record = linear.record()
    assert plan_schedule(ScheduleSettings(learning_rate=2e-3), 9, record, step=5) == Plan("linear", 2e-3, 3, 9, 9)
    stretch = ScheduleSettings(learning_rate=1e-3, resume_schedule="stretch")
    assert plan_schedule(stretch, 15, record, step=5).stretches == ((5, 9, 15),)


def test_a_restored_scheduler_takes_only_the_step_and_writes_this_runs_rate(tmp_path: Path) -> None:
    # A checkpoint of an older run: a LambdaLR whose base_lrs hold the peak it trained with (1e-3), at step 5.
    model = torch.nn.Linear(4, 4)
    old = build_adamw(model, 1e-3, 0.01, (0.9, 0.999), 1e-8, {"foreach": True})
    old_schedule = torch.optim.lr_scheduler.LambdaLR(old, lambda step: min(1.0, step / 8))
    for _ in range(5):
        old.step()
        old_schedule.step()
    saved_optimizer, saved_schedule = old.state_dict(), old_schedule.state_dict()
    assert saved_schedule["base_lrs"] == [1e-3, 1e-3] and saved_schedule["last_epoch"] == 5

    # This run: peak 3e-3 (the same warm-up); the optimizer is restored first, then the scheduler, as Lightning does.
    plan = Plan("linear", 3e-3, 8, 20, 20)
    optimizer = build_adamw(model, 3e-3, 0.01, (0.9, 0.999), 1e-8, {"foreach": True})
    schedule = PlannedLR(optimizer, plan)
    optimizer.load_state_dict(saved_optimizer)
    schedule.load_state_dict(saved_schedule)
    assert [g["lr"] for g in optimizer.param_groups] == [rate(5, plan)] * 2 == schedule.get_last_lr()
    optimizer.step()
    schedule.step()
    assert [g["lr"] for g in optimizer.param_groups] == [rate(6, plan)] * 2 == schedule.get_last_lr()

    # Its own state is the step and plain numbers: a weights-only checkpoint holds it, without the plan.
    torch.save(schedule.state_dict(), tmp_path / "schedule.pt")
    state = torch.load(tmp_path / "schedule.pt", weights_only=True)
    assert "plan" not in state and state["last_epoch"] == 6


def test_a_restored_optimizer_keeps_the_configured_settings_and_the_saved_moments() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    before = build_adamw(model, 1e-3, 0.01, (0.9, 0.999), 1e-8, {"fused": True})
    model(torch.randn(2, 4)).sum().backward()
    before.step()
    saved = before.state_dict()

    after = build_adamw(model, 5e-4, 0.02, (0.8, 0.99), 1e-6, {"foreach": True})
    after.load_state_dict(saved)
    settings = [(g["weight_decay"], g["betas"], g["eps"], g.get("fused"), g.get("foreach")) for g in after.param_groups]
    assert settings == [(0.02, (0.8, 0.99), 1e-6, None, True), (0.0, (0.8, 0.99), 1e-6, None, True)]
    assert [len(g["params"]) for g in after.param_groups] == [1, 3]  # the weight matrix; bias, norm weight and bias
    for param in model.parameters():
        assert torch.equal(after.state[param]["exp_avg"], before.state[param]["exp_avg"])


def _rows(path: Path) -> dict[int, list[float]]:
    return {int(step): [float(r) for r in rates] for step, *rates in csv.reader(io.StringIO(path.read_text()))}


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_a_run_resumed_mid_warm_up_with_another_peak_runs_its_plan_at_every_step(
    tiny_args: list[str], tmp_path: Path
) -> None:
    def recorder(path: Path, stop_after: int = 0) -> str:
        spec = {"class_path": "tests.helpers.RateRecorder", "init_args": {"path": str(path), "stop_after": stop_after}}
        return f"--trainer.callbacks+={json.dumps(spec)}"

    logger = tmp_path / "csv_logger.yaml"
    logger.write_text(
        "trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n"
        f"    init_args:\n      save_dir: {tmp_path / 'csv'}\n      name: run\n"
    )
    args = [*tiny_args, "--config", str(logger), "--model.warmup_steps", "8", "--trainer.val_check_interval", "12"]
    # Interrupted after step 3 of its warm-up (8 steps, to peak 1e-3)...
    assert main(["fit", *args, recorder(tmp_path / "first.csv", stop_after=3)]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    resumed_at, record = ckpt["global_step"], ckpt["mlm_lightning"]["schedule"]
    assert 0 < resumed_at < 8 and record["warmup_steps"] == 8 and record["total_steps"] == 12
    first = _rows(tmp_path / "first.csv")
    assert all(first[s] == [rate(s, Plan.from_record(record, 1e-3))] * 2 for s in range(resumed_at))

    # ... and resumed with a peak of 3e-3: every step runs at this run's plan, from the first one on.
    resume = ["--model.learning_rate", "0.003", "--ckpt_path", "last", recorder(tmp_path / "resumed.csv")]
    assert main(["fit", *args, *resume]) == 0
    plan = Plan.from_record(record, 3e-3)
    resumed = _rows(tmp_path / "resumed.csv")
    assert sorted(resumed) == list(range(resumed_at, 12))
    assert all(resumed[s] == [rate(s, plan)] * 2 for s in resumed)
    assert resumed[resumed_at][0] > first[resumed_at - 1][0] * 3  # not the checkpoint's peak
    # What LearningRateMonitor logged (train/lr/pg1, pg2) in the resumed run is this run's rate too (its step axis,
    # Lightning's batch counter, is not the global step after a resume: the values are compared, not the steps).
    (metrics,) = (tmp_path / "csv" / "run" / "version_1").rglob("metrics.csv")
    logged = [row for row in csv.DictReader(metrics.open()) if row.get("train/lr/pg1")]
    rates = {resumed[s][0] for s in resumed}
    assert len(logged) >= 3 and all(float(row["train/lr/pg1"]) in rates for row in logged)
    assert all(row["train/lr/pg1"] == row["train/lr/pg2"] for row in logged)
