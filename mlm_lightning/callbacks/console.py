"""What a run prints: a progress bar in steps, one line per validation, a model summary without empty columns.

The library messages a run does not print are filtered in :mod:`mlm_lightning.quiet`.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

# The figures of a validation line, with their decimals: every validation set's (``val/`` or ``val/<name>/``).
_LINE_METRICS = re.compile(r"^val/(?:[A-Za-z0-9_-]+/)?(loss|perplexity|accuracy)$")
_DIGITS = {"loss": 4, "perplexity": 2, "accuracy": 4}


def validation_line(trainer: L.Trainer) -> str:
    """``step 100/300  val/loss 5.2531  val/perplexity 191.07  val/accuracy 0.2214`` from the latest metrics.

    With named validation sets, each set's three figures in turn (``val/domain/loss ...  val/general/loss ...``).
    """
    metrics = trainer.callback_metrics
    total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
    parts = [f"step {trainer.global_step}{total}"]
    for name, value in metrics.items():
        found = _LINE_METRICS.match(name)
        if found:
            parts.append(f"{name} {float(value):.{_DIGITS[found[1]]}f}")
    return "  ".join(parts)


def duration(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``1h 02m``: a time for a person to read."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def progress_line(
    step: int, total: int | None, loss: float | None, tokens_per_sec: float | None, elapsed: float, left: float | None
) -> str:
    """``step 10/300  train/loss 6.1234  2,345 tokens/s  1m 40s elapsed, about 48m 20s left``."""
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    if loss is not None and math.isfinite(loss):
        parts.append(f"train/loss {loss:.4f}")
    if tokens_per_sec is not None:
        parts.append(f"{tokens_per_sec:,.0f} tokens/s")
    parts.append(f"{duration(elapsed)} elapsed" + (f", about {duration(left)} left" if left is not None else ""))
    return "  ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """Progress in optimizer steps over the whole run, and one line per validation.

    In a terminal: one bar ``step`` counting ``trainer.global_step`` up to ``max_steps`` (or the estimated
    number of optimizer steps of an epoch-based run), starting where a resumed run starts, with the latest
    losses beside it. When standard output is not a terminal (CI, ``nohup``, SLURM logs) there is no bar but a
    plain :func:`progress_line` every ``trainer.log_every_n_steps`` optimizer steps (step, training loss, tokens
    per second since the previous line, time elapsed and left), so a log never goes silent between validations.
    In both, every validation prints :func:`validation_line`.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._plain = False
        self._start: tuple[float, int] | None = None  # (clock, global step) when training started
        self._window: list[float] = [0.0, 0.0]  # [clock at its start, real tokens since then]
        self._printed_step = -1
        self._validation_began: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._plain = not sys.stdout.isatty()
        if self._plain:
            self.disable()  # the bars are still created (Lightning's hooks expect them) but draw nothing

    @property
    def train_description(self) -> str:
        return "step"

    def _total_steps(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return trainer.max_steps
        # By on_train_start the training dataloader exists (and a checkpoint is restored), so this is safe.
        estimate = trainer.estimated_stepping_batches
        return None if math.isinf(estimate) else int(estimate)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar = bar = self.init_train_tqdm()
        bar.reset(total=self._total_steps(trainer))
        bar.initial = bar.n = trainer.global_step  # a resumed run starts where its checkpoint ended
        now = time.perf_counter()
        self._start, self._window, self._printed_step = (now, trainer.global_step), [now, 0.0], trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run, not one per epoch

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if self._plain:
            self._plain_progress(trainer, batch)
        elif bar.n != step and (step % self.refresh_rate == 0 or step == bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # set_postfix redraws

    def _plain_progress(self, trainer: L.Trainer, batch: Any) -> None:
        """Counts the batch's tokens; every ``log_every_n_steps`` optimizer steps, prints a :func:`progress_line`."""
        from mlm_lightning.training.flops import batch_token_counts

        if not trainer.is_global_zero or self._start is None:
            return
        if isinstance(batch, Mapping) and "input_ids" in batch:
            self._window[1] += batch_token_counts(batch)[0]
        step, every = trainer.global_step, max(1, trainer.log_every_n_steps or 1)  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        if step == self._printed_step or step % every:
            return
        now = time.perf_counter()
        (begin, first), total = self._start, self._total_steps(trainer)
        rate = self._window[1] * trainer.world_size / (now - self._window[0]) if self._window[1] else None
        left = (now - begin) / (step - first) * (total - step) if total and step > first else None
        loss = trainer.callback_metrics.get("train/loss")
        print(progress_line(step, total, None if loss is None else float(loss), rate, now - begin, left), flush=True)
        self._window, self._printed_step = [now, 0.0], step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._validation_began = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._validation_began is not None:  # validation time is not training throughput
            self._window[0] += time.perf_counter() - self._validation_began
            self._validation_began = None
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        line = validation_line(trainer)
        if self._plain:
            print(line, flush=True)
        else:
            self.print(line)  # above the bar, which stays where it is

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the TensorBoard version number is not progress
        return items


class PlainModelSummary(ModelSummary):
    """Lightning's model summary without the FLOPs column and total when FLOPs were not measured.

    Lightning counts FLOPs only for a model with an ``example_input_array``; without one it prints a column of
    zeros and ``Total FLOPs: 0``, which reads as a measurement.
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from lightning.pytorch.utilities.model_summary import get_human_readable_count

        columns = [(name, values) for name, values in summary_data if name != "FLOPs" or total_flops]
        widths = [max([len(name), *(len(str(v)) for v in values)]) for name, values in columns]
        lines = [" | ".join(f"{name:<{w}}" for (name, _), w in zip(columns, widths)).rstrip()]
        lines.append("-" * len(lines[0]))
        for row in zip(*(values for _, values in columns)):
            lines.append(" | ".join(f"{str(v):<{w}}" for v, w in zip(row, widths)).rstrip())
        lines.append("-" * len(lines[0]))
        totals = [
            (get_human_readable_count(trainable_parameters), "Trainable params"),
            (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
            (get_human_readable_count(total_parameters), "Total params"),
            (f"{model_size:,.3f}", "Total estimated model params size (MB)"),
        ]
        if total_flops:
            totals.append((get_human_readable_count(total_flops), "Total FLOPs"))
        lines += [f"{value:<10} {label}" for value, label in totals]
        rank_zero_info("\n".join(lines))


def console_callbacks(trainer_config: dict[str, Any]) -> list[L.Callback]:
    """The progress bar and model summary for a Trainer built from ``trainer_config`` (the ``trainer.*`` settings).

    ``enable_progress_bar: false`` / ``enable_model_summary: false`` leave them out, and a progress bar or summary
    the user put in ``trainer.callbacks`` is kept instead of ours.
    """
    from lightning.pytorch.callbacks import ProgressBar

    given = trainer_config.get("callbacks") or []
    given = given if isinstance(given, list) else [given]
    extra: list[L.Callback] = []
    if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
        extra.append(StepProgressBar())
    if trainer_config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in given):
        extra.append(PlainModelSummary())
    return extra
