"""Callbacks that make a run tell its story: corpus report, fill-mask probes, hparams with results, export.

Each is a YAML section of the command line (``corpus_report``, ``probes``, ``hparams``, ``export``), so its
settings are flags and keys like any other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, cast

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from mlm_lightning.errors import MLMError
from mlm_lightning.settings import ClosedUnitInterval, PositiveInt

VAL_METRICS = ("val/loss", "val/perplexity", "val/accuracy")


def validation_metrics(trainer: L.Trainer) -> dict[str, float]:
    """Every validation metric of the latest validation (``val/...``, each named set's too), as numbers."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def end_of_fit_probe(trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
    """The table of the end-of-fit probe (``probe`` section, :class:`mlm_lightning.callbacks.probe.FitProbe`), run
    now if it has not run yet; ``None`` when the run has none. Found by its ``probe_table`` method (no import).
    """
    for callback in trainer.callbacks:  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        run = getattr(callback, "probe_table", None)
        if callable(run):
            return run(trainer, pl_module)
    return None


class CorpusReport(Callback):
    """Before training: prints the corpus report (and logs it as TensorBoard text ``data/corpus_report``).

    Args:
        max_unk_rate: Warn when more than this share of the tokens are the unknown token.
        max_document_share: Warn when one document holds more than this share of the training text.
    """

    def __init__(self, max_unk_rate: ClosedUnitInterval = 0.01, max_document_share: ClosedUnitInterval = 0.5) -> None:
        self.max_unk_rate = max_unk_rate
        self.max_document_share = max_document_share
        self._panel: str | None = None

    @rank_zero_only
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from mlm_lightning.tools.report import corpus_report, format_report, report_warnings

        dm = trainer.datamodule  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
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
        self._panel = text + "".join(f"\n\n**warning**: {w}" for w in found)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Logged here, not in setup: a resumed run's step is restored only now, and the panel belongs at it.
        panel, self._panel = self._panel, None
        for logger in tensorboards(trainer) if panel else []:
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
        from mlm_lightning.tools.fill_mask import with_mask_token

        dm = trainer.datamodule  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        if self.sentences and dm is not None and hasattr(dm, "tokenizer"):
            try:
                with_mask_token(self.sentences, dm.tokenizer)  # a probe without a mask fails now, not mid-run
            except MLMError as err:
                raise MLMError(f"probes.sentences: {err}") from None

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlm_lightning.tools.fill_mask import fill_mask, printable_token

        loggers = tensorboards(trainer)
        if not self.sentences or trainer.sanity_checking or not loggers:
            return
        results = fill_mask(pl_module.model, trainer.datamodule.tokenizer, self.sentences, self.top_k)  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        rows = ["| probe | predictions |", "| --- | --- |"]
        for sentence, per_mask in zip(self.sentences, results):
            cells = [
                ", ".join(f"{_cell(printable_token(token))} ({prob:.2g})" for token, prob in cands)
                for cands in per_mask
            ]
            # Pipes and asterisks in the text would break the Markdown table.
            rows.append(f"| {_cell(sentence)} | {' / '.join(cells)} |")
        for logger in loggers:
            logger.experiment.add_text("val/fill_mask", "\n".join(rows), global_step=trainer.global_step)


def _cell(text: str) -> str:
    """``text`` inside a Markdown table cell: pipes and asterisks escaped."""
    return text.replace("|", "\\|").replace("*", "\\*")


class HParamsSummary(Callback):
    """After fit: the run's settings with its final validation metrics on TensorBoard's hparams tab.

    The command line turns off the logger's placeholder ``hp_metric`` so this is the only hparams record.

    Args:
        metrics: Metrics shown next to the settings (values of the last validation); ``None``: every validation
            metric (``val/loss``, ``val/perplexity``, ``val/accuracy``, or those of each named validation set).
    """

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics) if metrics else None
        self._last: tuple[int, dict[str, float]] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            found = validation_metrics(trainer)
            wanted = self.metrics or list(found)
            # The step these were logged at (GlobalStepAxis): optimizer steps done.
            self._last = (trainer.global_step, {k: found[k] for k in wanted if k in found})

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last is None or not self._last[1]:
            return
        step, metrics = self._last
        params: dict[str, Any] = {**pl_module.hparams}
        if trainer.datamodule is not None:  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
            params.update(trainer.datamodule.hparams)  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        params = {k: v for k, v in params.items() if not k.startswith("_")}  # LightningCLI's `_instantiator`
        params["trainer"] = {
            "max_steps": trainer.max_steps,
            "max_epochs": trainer.max_epochs,
            "precision": trainer.precision,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "world_size": trainer.world_size,
        }
        for logger in tensorboards(trainer):
            _log_hparams_record(logger, params, metrics, step)


def _log_hparams_record(
    logger: TensorBoardLogger, params: dict[str, Any], metrics: dict[str, float], step: int
) -> None:
    """The hparams tab's record: the settings, and the names of the metrics whose last values it shows.

    Not ``logger.log_hyperparams(params, metrics)``: that also logs the metrics as scalars, a second point at the
    step of the last validation. The tab reads the values from the scalar curves, which already hold them.
    """
    from torch.utils.tensorboard.summary import hparams

    logger.log_hyperparams(params)  # hparams.yaml (without metrics Lightning writes no TensorBoard record)
    flat: dict[str, Any] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}/{key}" if prefix else str(key), inner)
        else:  # the types the hparams plugin takes, everything else as text (like Lightning's own conversion)
            flat[prefix] = value if isinstance(value, (bool, int, float, str)) else str(value)

    flatten("", params)
    writer = logger.experiment.file_writer  # the run's event file, opened with the SummaryWriter
    for summary in hparams(flat, metrics):
        writer.add_summary(summary, step)


class ExportOnFitEnd(Callback):
    """After fit: exports a checkpoint as a Hugging Face model folder (see ``python -m mlm_lightning export``).

    Args:
        enabled: Export at the end of ``fit``.
        output_dir: Folder to write; ``None`` = ``<trainer.default_root_dir>/export``.
        checkpoint: ``best`` (by ``checkpoint.monitor``: lowest ``val/loss``, or that of the first named
            validation set) or ``last``.
        overwrite: Replace an existing ``output_dir`` written by another run. Without it a new run stops before
            training when the folder exists; a run resumed from its own checkpoint folder replaces its own export.
    """

    def __init__(
        self,
        enabled: bool = False,
        output_dir: str | None = None,
        checkpoint: Literal["best", "last"] = "best",
        overwrite: bool = False,
    ) -> None:
        self.enabled = enabled
        self.output_dir = output_dir
        self.checkpoint = checkpoint
        self.overwrite = overwrite

    def target(self, trainer: L.Trainer) -> Path:
        """The folder this run exports to."""
        return Path(self.output_dir or Path(trainer.default_root_dir) / "export")

    def check_before_fit(self, trainer: L.Trainer, ckpt_path: str | os.PathLike[str] | None) -> None:
        """Refuses, before anything is trained, to replace the export of another run (the ``export`` rule).

        A run resumed from a checkpoint in its own checkpoint folder is the same run, so its export is its own.
        """
        from mlm_lightning.io.run_folder import RESUME_KEYWORDS

        target = self.target(trainer)
        if not self.enabled or self.overwrite or not target.exists():
            return
        callback = cast(ModelCheckpoint | None, trainer.checkpoint_callback)  # the run's is an MLMCheckpoint
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
        own_checkpoints = folder is not None and any(folder.glob("*.ckpt"))
        resuming = (
            ckpt_path is not None
            and folder is not None
            and own_checkpoints
            and (str(ckpt_path) in RESUME_KEYWORDS or Path(ckpt_path).resolve().parent == folder.resolve())
        )
        if not resuming:
            raise MLMError(
                f"{target} already exists (the export of an earlier run) and this run would replace it at its end: "
                f"start this run in its own folder (--trainer.default_root_dir logs/NEW_NAME), or keep the folder "
                f"and set --export.output_dir to a new one (--export.overwrite true replaces that run's export)"
            )

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlm_lightning.tools.export import export

        if not self.enabled:
            return
        ckpt = cast(ModelCheckpoint | None, trainer.checkpoint_callback)  # the run's is an MLMCheckpoint
        paths = [ckpt.best_model_path, ckpt.last_model_path] if ckpt else []
        if self.checkpoint == "last":
            paths.reverse()
        path = next((p for p in paths if p), None)  # no best without validation: then the last
        if path is None:
            rank_zero_warn("export.enabled is set but this run saved no checkpoint: nothing exported")
            return
        end_of_fit_probe(trainer, pl_module)  # first: the model card shows its table (probe.json beside `path`)
        # Replacing is decided before training (check_before_fit): here the folder is this run's to write.
        export(path, str(self.target(trainer)), overwrite=True)
