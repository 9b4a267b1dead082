"""Callbacks that make a run tell its story: corpus report, fill-mask probes, hparams with results, export.

Each is a YAML section of the command line (``corpus_report``, ``probes``, ``hparams``, ``export``), so its
settings are flags and keys like any other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from mlm_lightning.errors import MLMError
from mlm_lightning.settings import ClosedUnitInterval, NonNegativeInt, OpenUnitInterval, PositiveInt

VAL_METRICS = ("val/loss", "val/perplexity", "val/accuracy")


def validation_metrics(trainer: L.Trainer) -> dict[str, float]:
    """Every validation metric of the latest validation (``val/...``, each named set's too), as numbers."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def end_of_fit_probe(trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
    """The table of the end-of-fit probe (``probe`` section, :class:`mlm_lightning.probe.FitProbe`), run now if it
    has not run yet; ``None`` when the run has none. Found by its ``probe_table`` method: it imports this module.
    """
    for callback in trainer.callbacks:
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
        self._panel = text + "".join(f"\n\n**warning**: {w}" for w in found)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Logged here, not in setup: a resumed run's step is restored only now, and the panel belongs at it.
        panel, self._panel = self._panel, None
        for logger in _tensorboards(trainer) if panel else []:
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
        from mlm_lightning.fill_mask import fill_mask, printable_token

        loggers = _tensorboards(trainer)
        if not self.sentences or trainer.sanity_checking or not loggers:
            return
        results = fill_mask(pl_module.model, trainer.datamodule.tokenizer, self.sentences, self.top_k)
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
        from mlm_lightning.run_folder import RESUME_KEYWORDS

        target = self.target(trainer)
        if not self.enabled or self.overwrite or not target.exists():
            return
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
        own_checkpoints = folder is not None and any(folder.glob("*.ckpt"))
        resuming = (
            ckpt_path is not None
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
        end_of_fit_probe(trainer, pl_module)  # first: the model card shows its table (probe.json beside `path`)
        # Replacing is decided before training (check_before_fit): here the folder is this run's to write.
        export(path, str(self.target(trainer)), overwrite=True)


class ValidateBeforeFit(Callback):
    """Validates once before the first training step, so every validation curve starts at the base model's value.

    Logged at step 0 under the same tags as every validation (``val/loss``... or ``val/<name>/...``); kept in the
    checkpoints (``mlm_lightning.base_metrics``), so the model card of an export, like the table this prints at
    the end of ``fit``, puts the base model's figures beside the adapted model's. A resumed run does not validate
    again (it keeps the figures of its checkpoint). No checkpoint is saved for step 0 (Lightning's
    ``ModelCheckpoint`` saves nothing before the first optimizer step; tests/test_adaptation.py checks it), so
    ``checkpoint.monitor`` never picks the base model as the best and ``export`` never writes it out. The global
    random states are put back afterwards: training draws the same numbers as without this validation.

    Args:
        enabled: Validate before the first step. ``None``: when ``model.model_name_or_path`` loads a pretrained
            model (a from-scratch model's figures before training are those of random weights).
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = enabled
        self.base_metrics: dict[str, float] = {}

    def wanted(self, pl_module: L.LightningModule) -> bool:
        """Whether this run validates before training (``enabled``, or its default for the model)."""
        if self.enabled is not None:
            return self.enabled
        return bool(getattr(pl_module, "hparams", {}).get("model_name_or_path"))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.wanted(pl_module) or trainer.global_step > 0 or trainer.ckpt_path or self.base_metrics:
            return
        from mlm_lightning.random_states import collect_random_states, restore_random_states

        # The random states are put back after it: a dataloader iterator draws its seed from torch's global
        # generator, and training (dropout) must draw the same numbers as in a run that does not validate first.
        states = collect_random_states()
        # What Lightning's training loop does around a validation within an epoch (public loop attributes).
        trainer.validating = True
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.training = True
        restore_random_states(states)
        self.base_metrics = validation_metrics(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.base_metrics:
            checkpoint.setdefault("mlm_lightning", {})["base_metrics"] = dict(self.base_metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"base_metrics": dict(self.base_metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_metrics = dict(state_dict.get("base_metrics", {}))

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from mlm_lightning.report import before_after_table

        after = validation_metrics(trainer)
        if not self.base_metrics or not after:
            return
        table = before_after_table(self.base_metrics, after, trainer.global_step)
        probe = end_of_fit_probe(trainer, pl_module)  # the downstream task's figures, base vs adapted, below
        table += f"\n\n{probe}" if probe else ""
        rank_zero_info(table)
        for logger in _tensorboards(trainer):
            logger.experiment.add_text("val/before_after", table, global_step=trainer.global_step)


class GlobalStepAxis(Callback):
    """Puts every logged scalar at ``trainer.global_step``, the optimizer steps done, as checkpoint names do.

    Lightning plots the metrics of the k-th training step and of the validation after it at k-1 (its batch
    counter before it moves on) while the checkpoint of that moment is ``step=k``. A metric named ``step`` is
    Lightning's documented way to give the x-axis; ``ModelCheckpoint`` reads the same value, which is the
    global step here, so checkpoint names do not change. ``train/lr`` (Lightning's LearningRateMonitor, logged
    before each step) is at the steps done when it is read: the learning rate the next step uses.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        pl_module.log("step", float(trainer.global_step), on_step=True, on_epoch=False, batch_size=1)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("step", float(trainer.global_step), on_step=False, on_epoch=True, batch_size=1)


class FinalValidation(Callback):
    """Validates after the last training step when the schedule of validations would not.

    A run that ends between two validations (e.g. resumed to a ``max_steps`` that is not a multiple of
    ``val_check_interval``) would otherwise end with no metrics of its final weights: no point on the curves,
    nothing on the hparams tab, and a final checkpoint whose model card has no figures. Setting
    ``trainer.should_stop`` at the last step makes Lightning run the validation it runs before an early stop;
    a validation already due at that step is not repeated.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        last_step = 0 < trainer.max_steps <= trainer.global_step
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs
        if last_step or (last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            trainer.should_stop = True


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
        for logger in _tensorboards(trainer):
            logger.experiment.add_custom_scalars(dashboard_layout(prefixes))


class WeightAveragingSetting(EMAWeightAveraging):
    """An exponential moving average of the weights (Lightning's ``EMAWeightAveraging``), as a setting.

    Lightning's callback, unchanged, behind an on/off switch (the command line leaves it out of the run when
    ``enabled`` is false): after each optimizer step the average moves towards the weights by ``1 - decay``;
    validation, the checkpoints (hence ``export``) and the model at the end of ``fit`` use the average. Not with
    a sharded strategy (FSDP, DeepSpeed): Lightning's callback does not support one.

    Args:
        enabled: Keep an exponential moving average of the weights.
        decay: The average's decay per update (0.999: about the last 1,000 updates weigh in).
        update_every_n_steps: Update the average every this many optimizer steps.
        update_starting_at_step: First step to average from; ``None``: from the start.
    """

    def __init__(
        self,
        enabled: bool = False,
        decay: OpenUnitInterval = 0.999,
        update_every_n_steps: PositiveInt = 1,
        update_starting_at_step: NonNegativeInt | None = None,
    ) -> None:
        super().__init__(
            decay=decay, update_every_n_steps=update_every_n_steps, update_starting_at_step=update_starting_at_step
        )
        self.enabled = enabled
        self.decay = decay  # Lightning keeps it inside its averaging function only
