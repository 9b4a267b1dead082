"""The learning-rate schedule: a typed plan, the rate as one pure function of (step, plan), and its one writer.

A run's :class:`Plan` is made once, from its settings, its length and (on a resume) the checkpoint's record of the
schedule it followed (:func:`plan_schedule`). :func:`rate` gives the learning rate of any step from the plan alone,
and :class:`PlannedLR` is the only code that writes it into the optimizer: at every step, and when a checkpoint is
restored, where it takes the step count from the checkpoint and nothing else. So a resumed run with another
``model.learning_rate``, a longer ``trainer.max_steps`` or a new scheduler runs at the rate its own plan gives,
with nothing restored that must then be overwritten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

Scheduler = Literal["linear", "cosine", "constant", "wsd"]
Stretch = tuple[int, int, int]  # (anchor, old end, new end): see Plan.stretches


@dataclass(frozen=True)
class ScheduleSettings:
    """The settings the schedule is made of (``model.*``; see ``MLMModule``'s arguments of the same names)."""

    learning_rate: float
    scheduler: Scheduler = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.06
    decay_ratio: float = 0.2
    resume_schedule: Literal["keep", "stretch"] = "keep"

    @classmethod
    def of(cls, hparams: Mapping[str, Any], resume_schedule: Literal["keep", "stretch"]) -> ScheduleSettings:
        """The settings in a module's hyperparameters (``resume_schedule`` is not one: each run gives its own)."""
        names = ("learning_rate", "scheduler", "warmup_steps", "warmup_ratio", "decay_ratio")
        return cls(**{name: hparams[name] for name in names}, resume_schedule=resume_schedule)


@dataclass(frozen=True)
class Plan:
    """One run's learning-rate schedule: everything :func:`rate` needs.

    Attributes:
        scheduler: The shape after the warm-up: ``linear`` or ``cosine`` to zero, ``constant``, or ``wsd``
            (constant, then a 1-sqrt decay to zero over the last ``decay_steps``).
        peak: The peak learning rate (``model.learning_rate`` of this run, also after a resume).
        warmup_steps: Linear warm-up from 0 to ``peak``, in optimizer steps.
        base_total: The length the shape was made for (its decay ends there).
        total_steps: Where this run's schedule ends; steps past it run at its final rate.
        decay_steps: With ``wsd``: the length of the final decay (it starts at ``base_total - decay_steps``).
        stretches: Resumes that moved the end (``model.resume_schedule=stretch``), oldest first: each
            ``(anchor, old_end, new_end)`` maps the steps after ``anchor`` linearly so that ``new_end`` lands on
            ``old_end``: the schedule is unchanged up to ``anchor`` (no jump) and its remaining decay ends at
            ``new_end``.
    """

    scheduler: Scheduler
    peak: float
    warmup_steps: int
    base_total: int
    total_steps: int
    decay_steps: int | None = None
    stretches: tuple[Stretch, ...] = field(default=())

    def record(self) -> dict[str, Any]:
        """The plan as plain data for checkpoints, without the peak (a resumed run takes its own)."""
        record: dict[str, Any] = {
            "scheduler": self.scheduler,
            "warmup_steps": self.warmup_steps,
            "base_total": self.base_total,
            "stretches": [list(s) for s in self.stretches],
            "total_steps": self.total_steps,
        }
        if self.decay_steps is not None:
            record["decay_steps"] = self.decay_steps
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any], peak: float) -> Plan:
        """The plan a checkpoint recorded (:meth:`record`), at the peak rate ``peak``."""
        return cls(
            scheduler=record["scheduler"],
            peak=peak,
            warmup_steps=record["warmup_steps"],
            base_total=record["base_total"],
            total_steps=record["total_steps"],
            decay_steps=record.get("decay_steps"),
            stretches=tuple((a, o, n) for a, o, n in record["stretches"]),
        )


def _shape(s: float, plan: Plan) -> float:
    """The multiplier of the peak at step ``s`` of the plan's shape (before stretches; transformers' formulas)."""
    warmup, total = plan.warmup_steps, plan.base_total
    if s < warmup:
        return float(s) / float(max(1, warmup))
    if plan.scheduler == "linear":
        return max(0.0, float(total - s) / float(max(1, total - warmup)))
    if plan.scheduler == "cosine":
        progress = float(s - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if plan.scheduler == "wsd":
        decay = plan.decay_steps or 0
        stable = total - warmup - decay
        if s < warmup + stable:
            return 1.0
        if s < warmup + stable + decay:
            progress = float(s - warmup - stable) / float(max(1, decay))
            return max(0.0, 1.0 - math.sqrt(progress))
        return 0.0
    return 1.0  # constant


def multiplier(step: float, plan: Plan) -> float:
    """The share of the peak at ``step``: the shape, held at its value at ``total_steps``, through the stretches."""
    s = float(min(step, plan.total_steps))
    for anchor, old_end, new_end in reversed(plan.stretches):
        if s > anchor:
            s = anchor + (s - anchor) * (old_end - anchor) / (new_end - anchor)
    return _shape(s, plan)


def rate(step: float, plan: Plan) -> float:
    """The learning rate of optimizer step ``step`` (counted from 0) under ``plan``: a function of the two alone."""
    return plan.peak * multiplier(step, plan)


def total_optimizer_steps(trainer: L.Trainer) -> int:
    """Optimizer steps of the whole run, without building the training dataloader.

    ``trainer.estimated_stepping_batches`` would build it before a checkpoint is restored, which loses a stateful
    dataloader's position (Lightning issue 20550), so it is computed from the data module's
    ``num_train_batches()``. Lightning stops at ``max_steps`` or at the end of ``max_epochs``, whichever comes
    first: so does the schedule.
    """
    max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    dm = trainer.datamodule  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
    if dm is None or not hasattr(dm, "num_train_batches"):
        return max(1, int(trainer.estimated_stepping_batches))  # the same minimum, from the dataloader
    if trainer.max_epochs in (None, -1):
        return max_steps or max(1, int(trainer.estimated_stepping_batches))
    per_epoch = dm.num_train_batches()  # per device: each device steps once per batch of its own shard
    if isinstance(trainer.limit_train_batches, int):
        per_epoch = min(per_epoch, trainer.limit_train_batches)
    elif trainer.limit_train_batches is not None and trainer.limit_train_batches < 1.0:
        per_epoch = int(per_epoch * trainer.limit_train_batches)
    by_epochs = max(1, math.ceil(per_epoch / trainer.accumulate_grad_batches) * trainer.max_epochs)
    return min(max_steps, by_epochs) if max_steps else by_epochs


def plan_schedule(
    settings: ScheduleSettings, total: int, record: Mapping[str, Any] | None = None, step: int = 0
) -> Plan:
    """The plan of a run of ``total`` optimizer steps: a new one, or a resumed checkpoint's, kept or stretched.

    ``record`` is the checkpoint's :meth:`Plan.record` and ``step`` its step (``None``: a new run, as is a
    checkpoint of another scheduler). Says (in a warning or a log line) what a resume does to the schedule.
    """
    peak = settings.learning_rate
    if record is None or record["scheduler"] != settings.scheduler:  # a new run (or a checkpoint without a record)
        warmup = settings.warmup_steps or int(settings.warmup_ratio * total)
        if warmup >= total > 0:
            _warn_long_warmup(settings, warmup, total)
        decay = None
        if settings.scheduler == "wsd":  # the decay fits in what the warm-up leaves (no negative stable phase)
            decay = min(round(settings.decay_ratio * total), max(0, total - warmup))
        return Plan(settings.scheduler, peak, warmup, total, total, decay)
    kept = Plan.from_record(record, peak)
    end = kept.total_steps
    if total == end or settings.scheduler == "constant":
        return kept
    if total > end and step >= end and multiplier(step, kept) == 0.0:
        rank_zero_warn(
            f"the checkpoint's learning-rate schedule already ended at step {end} with a learning rate of 0: "
            f"steps {step + 1} to {total} would not change the weights, whatever model.resume_schedule says. To "
            f"train on, start a new run from an export of this one (model.model_name_or_path), or resume with "
            f"another model.scheduler (a new schedule)."
        )
        return kept
    how = settings.resume_schedule
    anchor = max(step, kept.warmup_steps)  # the warm-up is never stretched
    if how == "stretch" and total > anchor:
        rank_zero_info(
            f"model.resume_schedule=stretch: the learning-rate schedule of the checkpoint (step {step}) ended at "
            f"step {end}; its remaining decay now ends at step {total}, from the current rate without a jump"
        )
        return Plan(
            kept.scheduler, peak, kept.warmup_steps, kept.base_total, total, kept.decay_steps,
            (*kept.stretches, (anchor, end, total)),
        )  # fmt: skip
    if total > end:
        rank_zero_warn(
            f"this run ends at step {total} but the checkpoint's learning-rate schedule ends at step {end} "
            f"(model.resume_schedule={how}): steps {end + 1} to {total} run at its final learning "
            f"rate {rate(end, kept):.3g}. Set model.resume_schedule=stretch to stretch the "
            f"remaining decay to step {total}."
        )
    else:
        why = "" if how == "keep" else f" (nothing to stretch: the run is at step {step})"
        rank_zero_warn(
            f"this run ends at step {total}, before the end of the checkpoint's learning-rate schedule at step "
            f"{end} (model.resume_schedule={how}){why}: it stops at a learning rate of "
            f"{rate(total, kept):.3g}, not the schedule's final one."
            + (f" Set model.resume_schedule=stretch to end the decay at step {total}." if not why else "")
        )
    return kept


def _warn_long_warmup(settings: ScheduleSettings, warmup: int, total: int) -> None:
    """Says that a warm-up of ``warmup`` steps does not end within a run of ``total`` steps (nothing else does)."""
    setting = "model.warmup_steps" if settings.warmup_steps else "model.warmup_ratio"
    reached = settings.learning_rate * (total - 1) / warmup  # the rate of the run's last step
    decay = "" if settings.scheduler == "constant" else " and never decays"
    rank_zero_warn(
        f"the warm-up ({warmup} steps, {setting}) is not shorter than this run ({total} optimizer steps): the "
        f"learning rate stops at {reached:.3g} on its way to model.learning_rate {settings.learning_rate:g}{decay}. "
        f"Set a smaller model.warmup_steps, or model.warmup_steps 0 and a model.warmup_ratio (a share of the run)"
    )


class PlannedLR(LRScheduler):
    """The one writer of the learning rate: every parameter group runs at :func:`rate` of the step and ``plan``.

    Its state is the step count alone. Restored from a checkpoint, it takes the step from it and writes the rate
    of that step under this run's plan; the rest of a saved state (a ``LambdaLR``'s of older checkpoints too, whose
    ``base_lrs`` hold the peak the checkpoint trained with) is ignored. ``plan`` is not saved (the module records
    it in the checkpoint as plain data, :meth:`Plan.record`).

    Args:
        optimizer: The optimizer whose groups' ``lr`` it sets.
        plan: This run's plan (``plan`` may be replaced before a checkpoint is restored into it).
    """

    def __init__(self, optimizer: Optimizer, plan: Plan) -> None:
        self.plan = plan
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [rate(self.last_epoch, self.plan)] * len(self.optimizer.param_groups)

    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        """The rates in use (also right after a restore, before the first step)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in super().state_dict().items() if key != "plan"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({"last_epoch": state_dict["last_epoch"]})
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
