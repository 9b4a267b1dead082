"""The command line: ``python -m mlm_lightning {fit,validate,test,predict} --config ...`` (a LightningCLI)."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

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
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.tokenizer_path", "model.tokenizer_name_or_path", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # The tokenizer defaults to the pretrained model's own.
        if not config.data.tokenizer and config.model.model_name_or_path:
            config.data.tokenizer = config.model.model_name_or_path
        # A fixed checkpoint folder (not Lightning's per-version one), so `--ckpt_path last` finds the last run.
        if not config.checkpoint.dirpath:
            root = config.trainer.default_root_dir or os.getcwd()
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        # `enable_checkpointing false` / `logger false` switch our own callbacks off rather than clash with them.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if config.get("logger") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        return super()._instantiate_trainer(config, callbacks)


def run_cli(args: list[str] | None = None, run: bool = True) -> MLMCLI:
    """Builds (and by default runs) the CLI; ``args`` replaces ``sys.argv[1:]`` for in-process use."""
    return MLMCLI(
        MLMModule,
        MLMDataModule,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        trainer_defaults={"default_root_dir": "logs"},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Masked-language-model training for BERT-family encoders."},
    )
