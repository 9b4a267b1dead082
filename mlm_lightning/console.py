"""What a run prints: library noise filtered at its source, a progress bar in steps, one line per validation.

Every filter here names one message a normal run would otherwise print and that the user cannot act on, and
says why it is dropped. Everything else Lightning, ``datasets`` and ``transformers`` say still gets through.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

# Corpora at least this large show ``datasets``' tokenization progress bar in a terminal (smaller ones take
# seconds; their "tokenizing ..." log line is enough).
TOKENIZE_PROGRESS_MIN_BYTES = 50_000_000

# (message regex, module regex of the line the warning points at, why it is dropped)
_WARNINGS: list[tuple[str, str, str]] = [
    # torch >= 2.10 deprecates LeafSpec; Lightning's own _pytree copy still uses it (nothing a user can change).
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree", "torch/Lightning"),
    # We pass `args` on purpose (in-process `main([...])` calls, and `inspect`, which hands its own arguments on)
    # while sys.argv also holds words: the warning is about a mistake this project does not make.
    (r"LightningCLI's args parameter is intended", r"lightning\.pytorch\.cli", "in-process CLI"),
    # A non-empty checkpoint folder is already refused unless the run resumes from it (checkpointing.run_dir_guard),
    # so when Lightning sees one, it is the documented `--ckpt_path last` resume.
    (r"Checkpoint directory .* exists and is not empty", r"lightning\.pytorch\.callbacks\.model_checkpoint", "resume"),
]

# Lightning info lines (logger ``lightning.pytorch.utilities.rank_zero``) that say nothing on this machine.
_INFO_LINES: list[str] = [
    "💡 Tip:",  # advertisement for Lightning's cloud logger, printed on every run without it
    "GPU available: False, used: False",  # no accelerator at all: nothing to choose (a GPU machine still says so)
    "TPU available: False, using: 0 TPU cores",
    "Trainer already configured with model summary callbacks",  # ours (PlainModelSummary), on purpose
]


class _DropInfoLines(logging.Filter):
    """Drops the log records in :data:`_INFO_LINES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(line) for line in _INFO_LINES)


_LOG_FILTER = _DropInfoLines()


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Filters the known, unactionable library messages for the length of a command, and restores them after.

    ``datasets``' progress bars are switched off too ("Downloading data: 42/42 files" and "Generating train
    split" for files on this disk); :func:`tokenization_progress` brings the one that is useful back.
    """
    import datasets

    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    bars_were_disabled = datasets.utils.are_progress_bars_disabled()
    # HF_DATASETS_DISABLE_PROGRESS_BARS, when set, has priority (and datasets warns if we try to override it).
    touch_bars = datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None
    with warnings.catch_warnings():
        for message, module, _why in _WARNINGS:
            warnings.filterwarnings("ignore", message=message, module=module)
        rank_zero_log.addFilter(_LOG_FILTER)
        if touch_bars:
            datasets.utils.disable_progress_bars()
        try:
            yield
        finally:
            rank_zero_log.removeFilter(_LOG_FILTER)
            if touch_bars and not bars_were_disabled:
                datasets.utils.enable_progress_bars()


@contextlib.contextmanager
def tokenization_progress(total_bytes: int) -> Iterator[None]:
    """Shows ``datasets``' progress bars inside the block for a large corpus when stderr is a terminal.

    Elsewhere (logs, CI, small corpora) the caller's one "tokenizing ..." line stands for the whole step.
    """
    import datasets

    show = (
        total_bytes >= TOKENIZE_PROGRESS_MIN_BYTES
        and sys.stderr.isatty()
        and datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None
        and datasets.utils.are_progress_bars_disabled()
    )
    if show:
        datasets.utils.enable_progress_bars()
    try:
        yield
    finally:
        if show:
            datasets.utils.disable_progress_bars()


def validation_line(trainer: L.Trainer) -> str:
    """``step 100/300  val/loss 5.2531  val/perplexity 191.07  val/accuracy 0.2214`` from the latest metrics."""
    metrics = trainer.callback_metrics
    total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
    parts = [f"step {trainer.global_step}{total}"]
    for name, digits in (("val/loss", 4), ("val/perplexity", 2), ("val/accuracy", 4)):
        if name in metrics:
            parts.append(f"{name} {float(metrics[name]):.{digits}f}")
    return "  ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """Progress in optimizer steps over the whole run, and one line per validation.

    In a terminal: one bar ``step`` counting ``trainer.global_step`` up to ``max_steps`` (or the estimated
    number of optimizer steps of an epoch-based run), starting where a resumed run starts, with the latest
    losses beside it. When standard output is not a terminal (CI, ``nohup``, SLURM logs) there is no bar at
    all. In both, every validation prints :func:`validation_line`.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._plain = False

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

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run, not one per epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if bar.n != step and (step % self.refresh_rate == 0 or step == bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # set_postfix redraws

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
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
