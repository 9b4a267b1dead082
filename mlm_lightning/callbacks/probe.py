"""The downstream probe at the end of ``fit`` (the ``probe`` section): base model against adapted model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, cast

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mlm_lightning.callbacks.random_states import collect_random_states, restore_random_states
from mlm_lightning.errors import MLMError
from mlm_lightning.settings import NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt, SequenceLength
from mlm_lightning.tools.probe import ProbeSettings, load_encoder, run_probe
from mlm_lightning.tools.probe_table import format_table, plain
from mlm_lightning.tools.probe_tasks import GENRE_TASK, ProbeTask, Split


class FitProbe(Callback):
    """At the end of ``fit``: the probe (``python -m mlm_lightning probe``) of the base model and the adapted one.

    The adapted model is the checkpoint the export writes (``export.checkpoint``: the best by default), the base
    model ``model.model_name_or_path`` (none for a model trained from scratch). The table is printed under the
    before-and-after table, logged as TensorBoard text ``probe/table`` and written beside the checkpoints
    (``probe.json``), where the export's model card finds it. The task and its splits are read when ``fit``
    starts, so a bad task stops the run before training; a probe that fails at the end is one warning (the
    export still runs). Settings as in :class:`ProbeSettings`.

    Args:
        enabled: Run the probe at the end of ``fit``.
        task: A labelled ``.csv``/``.jsonl``/``.parquet`` file, or ``shakespeare-genre`` (the embedded task).
        test_file: A test file of the same columns; without it the task's rows are split.
        text_column: Column of the texts.
        label_column: Column of the labels.
        group_column: Column whose rows stay together on one side of a split; ``None``: every row alone.
        mode: ``linear`` (frozen encoder, logistic regression on mean-pooled embeddings) or ``fine-tune``.
        seeds: One run per seed (and fold); ``None``: 0, 1 and 2.
        folds: Stratified folds (>= 2); 0: a held-out split per seed.
        test_fraction: Share of each class's groups held out per seed, without folds or a test file.
        passages_per_play: Speeches per play in the embedded task.
        max_length: Tokens per text.
        batch_size: Texts per batch.
        l2: Regularisation of the logistic regression (scikit-learn's ``1/C``).
        epochs: Fine-tuning epochs.
        learning_rate: Fine-tuning peak learning rate.
    """

    def __init__(
        self,
        enabled: bool = False,
        task: str = GENRE_TASK,
        test_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        group_column: str | None = None,
        mode: Literal["linear", "fine-tune"] = "linear",
        seeds: list[int] | None = None,
        folds: NonNegativeInt = 0,
        test_fraction: OpenUnitInterval = 0.25,
        passages_per_play: PositiveInt = 12,
        max_length: SequenceLength = 128,
        batch_size: PositiveInt = 32,
        l2: PositiveFloat = 1.0,
        epochs: PositiveInt = 3,
        learning_rate: PositiveFloat = 5e-5,
    ) -> None:
        self.enabled = enabled
        self.settings = ProbeSettings(
            task=task,
            test_file=test_file,
            text_column=text_column,
            label_column=label_column,
            group_column=group_column,
            mode=mode,
            seeds=list(seeds) if seeds is not None else [0, 1, 2],
            folds=folds,
            test_fraction=test_fraction,
            passages_per_play=passages_per_play,
            max_length=max_length,
            batch_size=batch_size,
            l2=l2,
            epochs=epochs,
            learning_rate=learning_rate,
        )
        self.table: str | None = None
        self._loaded: tuple[ProbeTask, list[Split]] | None = None
        self._done = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled and stage == "fit" and self._loaded is None:
            try:
                self._loaded = self.settings.load()  # a bad task stops the run now, not after training
            except MLMError as err:
                raise MLMError(f"probe: {err}") from None

    def _checkpoint(self, trainer: L.Trainer) -> str | None:
        """The checkpoint the export writes (best, or last), or ``None`` when none was saved."""
        from mlm_lightning.callbacks import ExportOnFitEnd

        which = next((c.checkpoint for c in trainer.callbacks if isinstance(c, ExportOnFitEnd)), "best")  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        ckpt = cast(ModelCheckpoint | None, trainer.checkpoint_callback)  # the run's is an MLMCheckpoint
        paths = [ckpt.best_model_path, ckpt.last_model_path] if ckpt else []
        if which == "last":
            paths.reverse()
        return next((p for p in paths if p), None)

    def probe_table(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        """Runs the probe once (the first caller at the end of fit runs it); its table, or ``None``."""
        if not self.enabled or self._done or trainer.global_rank != 0:
            return self.table
        self._done = True
        if self._loaded is None:
            self._loaded = self.settings.load()
        task, splits = self._loaded
        path = self._checkpoint(trainer)
        models: list[tuple[str, Any]] = []
        base = pl_module.hparams.get("model_name_or_path")
        if base:
            models.append((f"base: {base}", lambda: load_encoder(base)))
        if path:
            models.append((f"adapted: {Path(path).name}", lambda: load_encoder(path)))
        else:
            tok = trainer.datamodule.tokenizer  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
            models.append((f"adapted: step {trainer.global_step}", lambda: (pl_module.model, tok)))
        device = trainer.strategy.root_device.type
        settings = {"accelerator": "gpu" if device == "cuda" else "cpu", "precision": str(trainer.precision)}
        states = collect_random_states()  # the probe's seeds must not change what runs after fit
        was_training = pl_module.training
        try:
            rows = run_probe(models, self.settings, settings, task, splits)
        except MLMError as err:
            rank_zero_warn(f"probe at the end of fit failed: {err}")
            return None
        finally:
            restore_random_states(states)
            pl_module.train(was_training)
        self.table = format_table(rows, task.name)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("probe/table", self.table, global_step=trainer.global_step)
        if path:
            stat = Path(path).stat()
            record = {
                "checkpoint": [Path(path).name, stat.st_size, stat.st_mtime_ns],
                "task": task.name,
                "settings": asdict(self.settings),
                "table": self.table,
                "rows": [{k: plain(v) for k, v in row.items()} for row in rows],
            }
            from mlm_lightning.io.atomic import atomic_file
            from mlm_lightning.tools.export import PROBE_RECORD

            with atomic_file(Path(path).parent / PROBE_RECORD) as tmp:
                tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return self.table

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not self._done:
            table = self.probe_table(trainer, pl_module)
            if table:
                rank_zero_info(table)
