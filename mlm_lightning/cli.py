"""The command line: ``python -m mlm_lightning {fit,validate,test,predict} --config ...`` (a LightningCLI)."""

from __future__ import annotations

import os
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mlm_lightning.callbacks import CorpusReport, ExportOnFitEnd, FillMaskProbes, HParamsSummary
from mlm_lightning.data import MLMDataModule
from mlm_lightning.module import MLMModule


class MLMCLI(LightningCLI):
    """LightningCLI with MLM wiring: data decides the vocabulary, checkpoints live in ``<root>/checkpoints``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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


class _ConfigOnly(MLMCLI):
    """Parses and resolves a configuration without building anything (for ``inspect``)."""

    def instantiate_classes(self) -> None:
        pass


def run_cli(args: list[str] | None = None, run: bool = True, cli_class: type[MLMCLI] = MLMCLI) -> MLMCLI:
    """Builds (and by default runs) the CLI; ``args`` replaces ``sys.argv[1:]`` for in-process use."""
    return cli_class(
        MLMModule,
        MLMDataModule,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        trainer_defaults={"default_root_dir": "logs"},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": "Masked-language-model training for BERT-family encoders. Tools around a run: "
            "export, fill-mask, inspect, train-tokenizer (python -m mlm_lightning TOOL --help)."
        },
    )


def parse_config(args: list[str]) -> Namespace:
    """The resolved configuration of ``fit`` arguments (``--config`` files and overrides), nothing built."""
    return run_cli(args, run=False, cli_class=_ConfigOnly).config
