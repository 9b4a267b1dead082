"""``train/tokens_per_sec`` and ``train/mfu``: real tokens and model FLOPs per second over each logging interval.

Hand-written rather than Lightning's ``ThroughputMonitor``, which (2.6) synchronises the GPU after every batch (a
host sync per step; here once per logging interval), reports tokens/s and MFU only once its window of batches
(``window_size``, default 100) is full, logs to the loggers directly under names that only overriding its private
``_compute`` could change (``train/device/items_per_sec``, ``train/device/mfu``), and gets no peak for a CPU or for
an "NVIDIA H200" from ``get_available_flops`` (see :mod:`mlm_lightning.training.flops`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mlm_lightning.model.head import step_flops
from mlm_lightning.training.flops import (
    CPU_PEAK_ENV,
    EncoderShape,
    batch_token_counts,
    compute_dtype,
    given_cpu_peak,
    peak_cache_path,
    peak_flops,
)

if TYPE_CHECKING:
    from mlm_lightning.model.module import MLMModule


class Throughput(L.Callback):
    """Logs real (non-pad) tokens per second and MFU every ``log_every_n_steps`` batches of training.

    Wall time, so it includes data loading; validation time is left out. MFU is the model FLOPs per second of this
    device over the same interval, divided by its peak (:func:`~mlm_lightning.training.flops.peak_flops`: the GPU
    table, or this CPU's measured and cached matmul peak); without a known peak only tokens/s is logged.
    """

    def __init__(self) -> None:
        self.peak: float | None = None  # this device's peak FLOP/s, found at the start of training
        self.shape: EncoderShape | None = None
        self._last_time: float | None = None
        self._tokens_seen = 0
        self._flops_seen = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Known once the device and precision are: the GPU table, or this CPU's measured (cached) matmul peak.
        try:
            self.shape = EncoderShape.from_config(cast("MLMModule", pl_module).model.config)
        except ValueError as err:  # a family whose config does not say its shape (FNet, XLM): tokens/s only
            self.shape = None
            rank_zero_info(f"no train/mfu this run: {err}")
            return
        if trainer.is_global_zero:
            self.peak = peak_flops(pl_module.device, compute_dtype(trainer.precision), _cache_dir(trainer))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero and trainer.world_size > 1:
            return
        every = max(1, trainer.log_every_n_steps)  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        if self._last_time is None:
            _sync(pl_module.device)
            self._last_time, self._tokens_seen, self._flops_seen = time.perf_counter(), 0, 0
            return
        self._tokens_seen += batch_token_counts(batch)[0]
        if self.shape is not None:
            self._flops_seen += step_flops(pl_module, batch, self.shape)
        if (batch_idx + 1) % every == 0:
            _sync(pl_module.device)  # once per interval, so the clock sees the GPU's work and not just its queue
            now = time.perf_counter()
            elapsed = max(now - self._last_time, 1e-9)
            rate = self._tokens_seen * trainer.world_size / elapsed
            pl_module.log("train/tokens_per_sec", rate, on_step=True, on_epoch=False, rank_zero_only=True)
            if self.peak and self.shape is not None:
                mfu = self._flops_seen / elapsed / self.peak
                pl_module.log("train/mfu", mfu, on_step=True, on_epoch=False, rank_zero_only=True)
                if mfu > 1 and pl_module.device.type == "cpu":
                    fix = (
                        f"${CPU_PEAK_ENV} is below it"
                        if given_cpu_peak() is not None
                        else f"the CPU's matmul peak was measured while it was busy; delete "
                        f"{peak_cache_path(_cache_dir(trainer))} to measure it again"
                    )
                    rank_zero_warn(f"train/mfu is above 1: {fix}")
            self._last_time, self._tokens_seen, self._flops_seen = now, 0, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time = None  # validation time is not training throughput


def _cache_dir(trainer: L.Trainer) -> Any:
    """The run's cache folder (``data.cache_dir``), where the CPU peak is cached too; ``None``: the default."""
    return getattr(getattr(trainer, "datamodule", None), "cache_dir", None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
