"""Callbacks that make a run tell its story: corpus report, fill-mask probes, hparams with results, export.

Each is a YAML section of the command line (``corpus_report``, ``probes``, ``hparams``, ``export``), so its
settings are flags and keys like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
from jsonargparse.typing import ClosedUnitInterval, PositiveInt
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from mlm_lightning.errors import MLMError

VAL_METRICS = ("val/loss", "val/perplexity", "val/accuracy")


def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


class CorpusReport(Callback):
    """Before training: prints the corpus report (and logs it as TensorBoard text ``data/corpus_report``).

    Args:
        max_unk_rate: Warn when more than this share of the tokens are the unknown token.
        max_document_share: Warn when one document holds more than this share of the training text.
    """

    def __init__(self, max_unk_rate: ClosedUnitInterval = 0.01, max_document_share: ClosedUnitInterval = 0.5) -> None:
        self.max_unk_rate = max_unk_rate
        self.max_document_share = max_document_share

    @rank_zero_only
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from mlm_lightning.report import corpus_report, format_report, report_warnings

        dm = trainer.datamodule
        if stage != "fit" or dm is None or not hasattr(dm, "corpus_meta"):
            return
        stats = corpus_report(dm)
        text = format_report(stats, dm)
        found = report_warnings(
            stats, dm, getattr(pl_module, "max_positions", None), self.max_unk_rate, self.max_document_share
        )
        rank_zero_info(text)
        for warning in found:
            rank_zero_warn(warning)
        for logger in _tensorboards(trainer):
            panel = text + "".join(f"\n\n**warning**: {w}" for w in found)
            logger.experiment.add_text("data/corpus_report", panel, global_step=trainer.global_step)


class FillMaskProbes(Callback):
    """At each validation: fill-mask predictions for a few sentences, as TensorBoard text ``val/fill_mask``.

    Args:
        sentences: Probe sentences, each with ``[MASK]`` (or the tokenizer's own mask token). Empty: no panel.
        top_k: Candidates shown per mask.
    """

    def __init__(self, sentences: list[str] | None = None, top_k: PositiveInt = 3) -> None:
        self.sentences = list(sentences or [])
        self.top_k = top_k

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from mlm_lightning.fill_mask import with_mask_token

        dm = trainer.datamodule
        if self.sentences and dm is not None and hasattr(dm, "tokenizer"):
            try:
                with_mask_token(self.sentences, dm.tokenizer)  # a probe without a mask fails now, not mid-run
            except MLMError as err:
                raise MLMError(f"probes.sentences: {err}") from None

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlm_lightning.fill_mask import fill_mask

        loggers = _tensorboards(trainer)
        if not self.sentences or trainer.sanity_checking or not loggers:
            return
        results = fill_mask(pl_module.model, trainer.datamodule.tokenizer, self.sentences, self.top_k)
        rows = ["| probe | predictions |", "| --- | --- |"]
        for sentence, per_mask in zip(self.sentences, results):
            cells = [", ".join(f"{token} ({prob:.2g})" for token, prob in cands) for cands in per_mask]
            # Pipes and asterisks in the text would break the Markdown table.
            safe = sentence.replace("|", "\\|").replace("*", "\\*")
            rows.append(f"| {safe} | {' / '.join(cells)} |")
        for logger in loggers:
            logger.experiment.add_text("val/fill_mask", "\n".join(rows), global_step=trainer.global_step)


class HParamsSummary(Callback):
    """After fit: the run's settings with its final validation metrics on TensorBoard's hparams tab.

    The command line turns off the logger's placeholder ``hp_metric`` so this is the only hparams record.

    Args:
        metrics: Metrics shown next to the settings (values of the last validation).
    """

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics or VAL_METRICS)
        self._last: tuple[int, dict[str, float]] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            found = trainer.callback_metrics
            # The step Lightning logged these at (its own LearningRateMonitor reads the same counter).
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            self._last = (step, {k: float(found[k]) for k in self.metrics if k in found})

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last is None or not self._last[1]:
            return
        step, metrics = self._last
        params: dict[str, Any] = {**pl_module.hparams}
        if trainer.datamodule is not None:
            params.update(trainer.datamodule.hparams)
        params = {k: v for k, v in params.items() if not k.startswith("_")}  # LightningCLI's `_instantiator`
        params["trainer"] = {
            "max_steps": trainer.max_steps,
            "max_epochs": trainer.max_epochs,
            "precision": trainer.precision,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "world_size": trainer.world_size,
        }
        for logger in _tensorboards(trainer):
            # At the step these values were logged at: the curves gain no new point (log_hyperparams logs them too).
            logger.log_hyperparams(params, metrics, step=step)


class ExportOnFitEnd(Callback):
    """After fit: exports a checkpoint as a Hugging Face model folder (see ``python -m mlm_lightning export``).

    Args:
        enabled: Export at the end of ``fit``.
        output_dir: Folder to write; ``None`` = ``<trainer.default_root_dir>/export``. Replaced if it exists.
        checkpoint: ``best`` (lowest ``val/loss``) or ``last``.
    """

    def __init__(
        self, enabled: bool = False, output_dir: str | None = None, checkpoint: Literal["best", "last"] = "best"
    ) -> None:
        self.enabled = enabled
        self.output_dir = output_dir
        self.checkpoint = checkpoint

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlm_lightning.export import export

        if not self.enabled:
            return
        ckpt = trainer.checkpoint_callback
        paths = [ckpt.best_model_path, ckpt.last_model_path] if ckpt else []
        if self.checkpoint == "last":
            paths.reverse()
        path = next((p for p in paths if p), None)  # no best without validation: then the last
        if path is None:
            rank_zero_warn("export.enabled is set but this run saved no checkpoint: nothing exported")
            return
        export(path, self.output_dir or str(Path(trainer.default_root_dir) / "export"), overwrite=True)
