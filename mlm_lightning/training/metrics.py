"""Token-weighted evaluation metrics, one set per evaluation split, and their logging at the end of an evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, SumMetric


class EvalMetrics(nn.Module):
    """The token-weighted metrics of one evaluation set, which torchmetrics reduces across devices.

    ``loss`` is the mean cross-entropy over all masked tokens (perplexity is its ``exp``), ``accuracy`` the share
    of masked tokens predicted exactly; ``nonfinite`` counts masked tokens whose loss is NaN or infinite and
    ``words`` the masked words of a whole-word-masking batch (``masked_words``), for per-word figures.
    """

    def __init__(self) -> None:
        super().__init__()
        # nan_strategy="disable": a NaN loss must make the mean NaN, not be dropped from it (the default).
        self.loss = MeanMetric(nan_strategy="disable")
        self.accuracy = MeanMetric()
        self.nonfinite = SumMetric(nan_strategy="disable")
        self.words = SumMetric()

    def add(self, batch: Mapping[str, Any], logits: torch.Tensor, losses: torch.Tensor) -> None:
        """Counts one batch: its masked tokens' ``logits`` and per-token ``losses`` (``batch["masked_labels"]``)."""
        labels = batch["masked_labels"]
        if labels.numel():
            self.loss.update(losses)  # mean over all masked tokens of the split: token-weighted
            self.accuracy.update((logits.argmax(-1) == labels).float())
            self.nonfinite.update((~torch.isfinite(losses)).sum())  # on the device: no synchronisation per step
        if "masked_words" in batch:  # whole-word masking: every piece of a chosen word is a masked token
            self.words.update(float(batch["masked_words"]))

    def reset(self) -> None:
        """Starts the next evaluation from zero."""
        for metric in (self.loss, self.accuracy, self.nonfinite, self.words):
            metric.reset()


def metric_key(prefix: str) -> str:
    """A metric prefix as a submodule name (``val/domain`` -> ``val:domain``: module names cannot hold dots)."""
    return prefix.replace("/", ":")


class SplitMetrics(nn.ModuleDict):
    """One :class:`EvalMetrics` per evaluation split: ``val``, ``test``, and ``val/<name>`` per named validation set.

    Their states are not saved in checkpoints (torchmetrics' states are not persistent).
    """

    def __init__(self) -> None:
        super().__init__({"val": EvalMetrics(), "test": EvalMetrics()})

    def split(self, prefix: str) -> EvalMetrics:
        """The metrics of the split of metric prefix ``prefix``."""
        return cast(EvalMetrics, self[metric_key(prefix)])

    def add_splits(self, prefixes: Iterable[str]) -> None:
        """A metric set for each of ``prefixes`` that has none yet (before Lightning moves the module to its device)."""
        for prefix in prefixes:
            if metric_key(prefix) not in self:
                self[metric_key(prefix)] = EvalMetrics()


def log_epoch_metrics(
    module: L.LightningModule, metrics: EvalMetrics, stage: str, shown: bool, counts: dict[str, dict[str, int]]
) -> None:
    """Logs ``stage``'s loss, perplexity, accuracy (and per-word figures) from ``metrics``, then resets them.

    ``shown``: on the progress bar. ``counts[stage]`` becomes the masked tokens and words counted on all devices
    (left as it is where no device saw a batch). Warns where masked tokens had a non-finite loss.
    """
    strategy = module.trainer.strategy
    # Decided on the count of all devices: compute() below gathers from every device, so all must join it.
    updates = torch.tensor(metrics.loss.update_count, device=module.device)
    if strategy.reduce(updates, reduce_op="sum") == 0:
        return
    loss = metrics.loss.compute()
    # The counts summed over devices (every device is here: the update count above was reduced the same way).
    local = torch.stack([metrics.nonfinite.sum_value, metrics.loss.weight, metrics.words.sum_value]).double()
    bad, total, words = (int(x) for x in strategy.reduce(local, reduce_op="sum").tolist())
    if bad:
        split = "test" if stage == "test" else "validation" + (f" set {stage[4:]}" if "/" in stage else "")
        rank_zero_warn(
            f"{split}: {bad:,} of {total:,} masked tokens have a non-finite loss (NaN or "
            f"infinite), so {stage}/loss and {stage}/perplexity are {float(loss)}: the model has (partly) "
            f"diverged. Lower model.learning_rate or resume from an earlier checkpoint."
        )
    module.log(f"{stage}/loss", loss, prog_bar=shown, add_dataloader_idx=False)
    module.log(f"{stage}/perplexity", torch.exp(loss), prog_bar=shown, add_dataloader_idx=False)
    module.log(f"{stage}/accuracy", metrics.accuracy.compute(), add_dataloader_idx=False)
    counts[stage] = {"masked_tokens": total, "masked_words": words}
    if words:
        # Per word: each chosen word's pieces were all masked, so the summed token loss is the words' loss.
        word_loss = loss.double() * total / words
        module.log(f"{stage}/word_loss", word_loss.float(), add_dataloader_idx=False)
        module.log(f"{stage}/word_perplexity", torch.exp(word_loss).float(), add_dataloader_idx=False)
    metrics.reset()
