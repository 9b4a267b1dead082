"""The command line: ``python -m mlm_lightning {fit,validate,test,predict} --config ...`` (a LightningCLI)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mlm_lightning.allocator import limit_heap_growth
from mlm_lightning.callbacks import CorpusReport, ExportOnFitEnd, FillMaskProbes, HParamsSummary
from mlm_lightning.checkpointing import (
    RESUME_KEYWORDS,
    UNREADABLE,
    AtomicCheckpointIO,
    MLMCheckpoint,
    RandomStates,
    explain_checkpoint_errors,
    run_dir_guard,
    unreadable_checkpoint,
)
from mlm_lightning.data import MLMDataModule
from mlm_lightning.module import MLMModule
from mlm_lightning.nonfinite import NonFiniteLoss


class MLMCLI(LightningCLI):
    """LightningCLI with MLM wiring: data decides the vocabulary, checkpoints live in ``<root>/checkpoints``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MLMCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch}-step{step}-val_loss{val/loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(NonFiniteLoss, "nonfinite")
        parser.add_lightning_class_args(CorpusReport, "corpus_report")
        parser.add_lightning_class_args(FillMaskProbes, "probes")
        parser.add_lightning_class_args(HParamsSummary, "hparams")
        parser.add_lightning_class_args(ExportOnFitEnd, "export")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.tokenizer_path", "model.tokenizer_name_or_path", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # The tokenizer defaults to the pretrained model's own.
        if not config.data.tokenizer and config.model.model_name_or_path:
            config.data.tokenizer = config.model.model_name_or_path
        root = config.trainer.default_root_dir or os.getcwd()
        # A fixed checkpoint folder (not Lightning's per-version one), so `--ckpt_path last` finds the last run.
        if not config.checkpoint.dirpath:
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        # Lightning's default TensorBoard logger, minus its placeholder hp_metric (HParamsSummary writes the real one).
        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=root, default_hp_metric=False),
            )

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        # `enable_checkpointing false` / `logger false` switch our own callbacks off rather than clash with them.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if config.get("logger") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        return super()._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyperparameters of a --ckpt_path file first thing: a bad file gets one message,
        # and a missing one is reported now rather than after the Trainer has set up logging.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in RESUME_KEYWORDS and "://" not in ckpt_path and not os.path.isfile(ckpt_path):
            raise unreadable_checkpoint(ckpt_path)
        try:
            super()._parse_ckpt_path()
        except UNREADABLE as err:
            raise unreadable_checkpoint(ckpt_path, err) from err

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    # LightningCLI runs these instead of the Trainer's methods of the same name. Input that would fail in the
    # Trainer's setup is checked first, so a bad run stops before it writes logs or checkpoints.
    def fit(self, model: MLMModule, **kwargs: Any) -> None:
        model.check_max_seq_length(getattr(self.datamodule, "max_seq_length", None))
        ckpt_path = kwargs.get("ckpt_path")
        with run_dir_guard(self.trainer, ckpt_path), explain_checkpoint_errors(ckpt_path):
            self.trainer.fit(model, **kwargs)

    def validate(self, model: MLMModule, **kwargs: Any) -> None:
        model.check_max_seq_length(getattr(self.datamodule, "max_seq_length", None))
        with explain_checkpoint_errors(kwargs.get("ckpt_path")):
            self.trainer.validate(model, **kwargs)

    def test(self, model: MLMModule, **kwargs: Any) -> None:
        model.check_max_seq_length(getattr(self.datamodule, "max_seq_length", None))
        with explain_checkpoint_errors(kwargs.get("ckpt_path")):
            self.trainer.test(model, **kwargs)


class MLMArgumentParser(LightningArgumentParser):
    """The CLI's parser: a bad key, flag or value is reported in one line, without jsonargparse's full usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("MLM_LIGHTNING_DEBUG"):
            super().error(message, ex)  # internal trial parses, or the user asked for everything
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {' '.join(message.split())} (every setting: {prog} --help)\n")
        sys.exit(2)


def _prog() -> str:
    """The command as the user typed it: ``python -m mlm_lightning`` rather than ``__main__.py``."""
    name = Path(sys.argv[0]).name
    return "python -m mlm_lightning" if name in ("__main__.py", "") else name


class _ConfigOnly(MLMCLI):
    """Parses and resolves a configuration without building anything (for ``inspect``)."""

    def instantiate_classes(self) -> None:
        pass


def run_cli(args: list[str] | None = None, run: bool = True, cli_class: type[MLMCLI] = MLMCLI) -> MLMCLI:
    """Builds (and by default runs) the CLI; ``args`` replaces ``sys.argv[1:]`` for in-process use."""
    if run:
        limit_heap_growth()
    return cli_class(
        MLMModule,
        MLMDataModule,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        # RandomStates is always on (exact resume needs it); it has no settings.
        trainer_defaults={"default_root_dir": "logs", "callbacks": [RandomStates()]},
        save_config_kwargs={"overwrite": True},
        parser_class=MLMArgumentParser,
        parser_kwargs={
            "description": "Masked-language-model training for BERT-family encoders. Tools around a run: "
            "export, fill-mask, inspect, train-tokenizer (python -m mlm_lightning TOOL --help).",
            "prog": _prog(),
        },
    )


def parse_config(args: list[str]) -> Namespace:
    """The resolved configuration of ``fit`` arguments (``--config`` files and overrides), nothing built."""
    return run_cli(args, run=False, cli_class=_ConfigOnly).config
