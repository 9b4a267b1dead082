"""The TensorBoard page a run opens on: a Custom Scalars layout of each set's curves."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from mlm_lightning.callbacks.story import tensorboards

# TensorBoard's Custom Scalars tab, opened without smoothing (its default, 0.6, drew a validation curve of four
# points 100 times off its values): docs/output.md#tensorboard.
CUSTOM_SCALARS_URL = "http://localhost:6006/#custom_scalars&_smoothingWeight=0"


def dashboard_layout(prefixes: list[str]) -> dict[str, dict[str, list[Any]]]:
    """The Custom Scalars layout of a run whose validation sets log under ``prefixes`` (``val``, ``val/<name>``).

    Each chart is TensorBoard's ``Multiline`` of exact tags (escaped: the plugin reads them as regular
    expressions). The loss is the natural logarithm of the perplexity, so its chart is the perplexity on a log
    scale: the base model's step-0 figure (tens of thousands for a fresh head) and the adapted one (around 100)
    fit on one chart, which the Scalars tab's linear axis, with outliers ignored, cannot show.
    """
    import re

    tag = lambda name: f"^{re.escape(name)}$"  # noqa: E731
    sets = [(prefix.partition("/")[2] or "validation", prefix) for prefix in prefixes]
    validation: dict[str, list[Any]] = {
        "loss = log(perplexity), every set: step 0 is the base model": [
            "Multiline",
            [tag(f"{prefix}/loss") for _, prefix in sets],
        ],
    }
    for name, prefix in sets:
        validation[f"perplexity, {name}: before (step 0) and after"] = ["Multiline", [tag(f"{prefix}/perplexity")]]
    validation["masked-token accuracy, every set"] = ["Multiline", [tag(f"{prefix}/accuracy") for _, prefix in sets]]
    training = {
        "training loss and validation loss": [
            "Multiline",
            [tag("train/loss"), *(tag(f"{prefix}/loss") for _, prefix in sets)],
        ],
        "learning rate (warm-up, decay)": ["Multiline", ["^train/lr/"]],
        "tokens per second": ["Multiline", [tag("train/tokens_per_sec")]],
    }
    return {"1. validation: base model to adapted model": validation, "2. training": training}


class DashboardLayout(Callback):
    """At the start of fit: a TensorBoard Custom Scalars layout that tells the run's story on one page.

    Per validation set, the perplexity from the base model (step 0, with ``validate_before_fit``) to the end on one
    chart; every set's loss (the log of its perplexity) together, which shows forgetting of a ``general`` set
    beside the ``domain`` one; accuracy; training against validation loss. Open it at
    :data:`CUSTOM_SCALARS_URL` (smoothing off; docs/output.md says what to look at).
    """

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        prefixes = list(getattr(pl_module, "val_prefixes", None) or ["val"])
        for logger in tensorboards(trainer):
            logger.experiment.add_custom_scalars(dashboard_layout(prefixes))
