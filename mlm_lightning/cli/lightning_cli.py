"""The command line: ``python -m mlm_lightning {fit,validate,test,predict} --config ...`` (a LightningCLI)."""

from __future__ import annotations

import os
import sys
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _InstantiatorFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from mlm_lightning.callbacks import (
    CorpusReport,
    DashboardLayout,
    ExportOnFitEnd,
    FillMaskProbes,
    FinalValidation,
    GlobalStepAxis,
    HParamsSummary,
    ValidateBeforeFit,
    WeightAveragingSetting,
)
from mlm_lightning.callbacks.checkpoint import MLMCheckpoint
from mlm_lightning.callbacks.console import console_callbacks
from mlm_lightning.callbacks.memory import HeapGrowthLimit, limit_heap_growth
from mlm_lightning.callbacks.nonfinite import NonFiniteLoss
from mlm_lightning.callbacks.probe import FitProbe
from mlm_lightning.callbacks.random_states import RandomStates
from mlm_lightning.callbacks.throughput import Throughput
from mlm_lightning.cli.messages import SUBCOMMAND_HELP, MLMArgumentParser, command_name
from mlm_lightning.cli.results import evaluated_step, resolved_config_text, results_table
from mlm_lightning.cli.resume import (
    CheckpointSettings,
    check_resumed_data,
    check_tokenizer,
    checkpoint_dir,
    reconcile_with_checkpoint,
)
from mlm_lightning.data import MLMDataModule
from mlm_lightning.errors import MLMError
from mlm_lightning.interrupts import stop_gracefully
from mlm_lightning.io.checkpoint_io import AtomicCheckpointIO, explain_checkpoint_errors
from mlm_lightning.io.run_folder import run_dir_guard
from mlm_lightning.model.build import check_max_seq_length
from mlm_lightning.model.module import MLMModule
from mlm_lightning.settings import plain_values
from mlm_lightning.training.flops import given_cpu_peak
from mlm_lightning.training.precision import default_precision

# Trainer settings whose impossible values the Trainer accepts (those it rejects raise MisconfigurationException,
# turned into one line below): setting -> (is it allowed, the allowed range in words).
TRAINER_RULES: dict[str, tuple[Any, str]] = {
    "max_steps": (lambda v: v is None or v >= -1, "-1 (no limit) or >= 0"),
    "max_epochs": (lambda v: v is None or v >= -1, "-1 (no limit), >= 0 or null"),
    "min_steps": (lambda v: v is None or v >= 0, ">= 0 or null"),
    "min_epochs": (lambda v: v is None or v >= 0, ">= 0 or null"),
    "accumulate_grad_batches": (lambda v: v >= 1, ">= 1"),
    "log_every_n_steps": (lambda v: v is None or v >= 0, ">= 0 or null"),
    "check_val_every_n_epoch": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "num_sanity_val_steps": (lambda v: v is None or v >= -1, "-1 (all), >= 0 or null"),
    "gradient_clip_val": (lambda v: v is None or v >= 0, ">= 0 or null"),
}


DEFAULT_CHECKPOINT_NAME = "epoch{epoch}-step{step}-val_loss{val/loss:.4f}"
EVAL_METRICS = ("loss", "perplexity", "accuracy", "word_loss", "word_perplexity")


def _resolve_monitor(config: Namespace) -> None:
    """``checkpoint.monitor`` for named validation sets: the first set's loss unless another is named; checked.

    With ``data.val_files`` a mapping there is no ``val/loss``: the default monitor becomes ``val/<first>/loss``
    (and the default file name follows the monitored metric). A ``val/...`` monitor that no validation logs is an
    error now, not at the first validation.
    """
    val_files = config.data.get("val_files")
    if isinstance(val_files, Namespace):
        val_files = val_files.as_dict()
    names = list(val_files) if isinstance(val_files, dict) else []
    prefixes = [f"val/{name}" for name in names] or ["val"]
    checkpoint = config.checkpoint
    if names and checkpoint.monitor == "val/loss":
        checkpoint.monitor = f"{prefixes[0]}/loss"
    monitor = checkpoint.monitor
    if monitor and checkpoint.filename == DEFAULT_CHECKPOINT_NAME and monitor != "val/loss":
        checkpoint.filename = f"epoch{{epoch}}-step{{step}}-{monitor.replace('/', '_')}{{{monitor}:.4f}}"
    logged = [f"{prefix}/{metric}" for prefix in prefixes for metric in EVAL_METRICS]
    if monitor and monitor.startswith("val/") and monitor not in logged:
        raise MLMError(
            f"checkpoint.monitor={monitor} is not a validation metric of this configuration: "
            f"{', '.join(f'{p}/loss' for p in prefixes)} (or .../perplexity, .../accuracy)"
        )


class MLMCLI(LightningCLI):
    """LightningCLI with MLM wiring: data decides the vocabulary, checkpoints live in ``<root>/checkpoints``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The subcommand asked for (`fit` of `fit --help`): only its parser is built (see subcommands).
        words = kwargs.get("args")
        words = sys.argv[1:] if words is None else words
        first = words[0] if isinstance(words, list) and words else None
        every = LightningCLI.subcommands()
        self._requested = first if kwargs.get("run", True) and first in every else None
        if self._requested:  # the other subcommands' parser settings would go to the main parser
            options = kwargs.get("parser_kwargs") or {}
            kwargs["parser_kwargs"] = {k: v for k, v in options.items() if k not in every or k == self._requested}
        self._print_config: str | None = None  # --print_config's value, taken out of jsonargparse's hands
        self._args: list[str] | None = None  # the command line's words (None: a dict configuration)
        self._precision_note = ""  # why trainer.precision is what it is, when the run chose it
        self._checkpoint_settings: CheckpointSettings | None = None  # the --ckpt_path file's model settings
        self._run_parser: LightningArgumentParser | None = None  # the running subcommand's (see subcommands)
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        # LightningCLI builds the parsers of all four subcommands (each introspects the model, the data, the
        # Trainer and every callback section) before it reads which one is asked for: most of `fit --help`'s
        # parser time went to validate, test and predict (benchmarks/README.md). A first word that is not a
        # subcommand (a typo, `--help`) still gets all of them, so its error lists the choices.
        every = LightningCLI.subcommands()
        return {self._requested: every[self._requested]} if self._requested else every

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self._run_parser = parser  # the requested subcommand's, the only one built (or the main one: run=False)
        parser.add_lightning_class_args(MLMCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": DEFAULT_CHECKPOINT_NAME,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(NonFiniteLoss, "nonfinite")
        parser.add_lightning_class_args(CorpusReport, "corpus_report")
        parser.add_lightning_class_args(FillMaskProbes, "probes")
        parser.add_lightning_class_args(ValidateBeforeFit, "validate_before_fit")
        parser.add_lightning_class_args(HParamsSummary, "hparams")
        parser.add_lightning_class_args(ExportOnFitEnd, "export")
        parser.add_lightning_class_args(FitProbe, "probe")  # after export: its table goes into the model card
        parser.add_lightning_class_args(WeightAveragingSetting, "weight_averaging")
        parser.add_lightning_class_args(HeapGrowthLimit, "memory")
        # Lightning's Trainer flags last, so `fit --help` leads with this project's own settings (see below).
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.tokenizer_path", "model.tokenizer_name_or_path", apply_on="instantiate")
        # The special-token ids too: a new RoBERTa's padding index (its position ids start after it) is its <pad>.
        parser.link_arguments("data.pad_token_id", "model.pad_token_id", apply_on="instantiate")
        parser.link_arguments("data.special_token_ids", "model.special_token_ids", apply_on="instantiate")

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # --help lists groups in the order they are added: LightningCLI adds the Trainer's first, ahead of
        # everything a user of this project looks for. Model and data here; the Trainer in add_arguments_to_parser.
        assert self.model_class is not None and self.datamodule_class is not None  # run_cli passes both
        parser.add_lightning_class_args(self.model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self.datamodule_class, "data", subclass_mode=self.subclass_mode_data)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # `--print_config` is taken out of jsonargparse's hands: it prints at parse time, before the values this
        # class resolves (monitor, precision, tokenizer, checkpoint folder, logger). before_instantiate_classes
        # prints them instead, as the run would use them.
        if not isinstance(args, dict):
            words = list(sys.argv[1:] if args is None else args)
            kept = [w for w in words if w != "--print_config" and not w.startswith("--print_config=")]
            if len(kept) < len(words):
                flag = next(w for w in words if w == "--print_config" or w.startswith("--print_config="))
                self._print_config = flag.partition("=")[2]
                args = kept
        super().parse_arguments(parser, args)
        self._args = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for key, (allowed, text) in TRAINER_RULES.items():
            value = config.trainer.get(key)
            if not isinstance(value, bool) and not allowed(value):
                raise MLMError(f"trainer.{key} must be {text}, got {value}")
        given_cpu_peak()  # $MLM_LIGHTNING_CPU_PEAK_FLOPS, checked before anything is written
        self._resolve(config)
        # Lightning's instantiators (they record the model's and the data's settings for load_from_checkpoint),
        # replaced by the same fed plain numbers, and one for every other class: the range-checked types of
        # mlm_lightning.settings parse into int/float subclasses, which would reach checkpoints (the model's config)
        # and break weights_only loads. (Plain values in the configuration are not enough: instantiation re-types.)
        for key, cls, subclasses in (
            ("model", self.model_class, self.subclass_mode_model),
            ("data", self.datamodule_class, self.subclass_mode_data),
        ):
            self.parser.add_instantiator(_PlainInstantiatorFn(cli=self, key=key), cls, subclasses)
        self.parser.add_instantiator(_plain_instantiator, object)
        if self._print_config is not None:
            print(resolved_config_text(self._run_parser or self.parser, config, "skip_null" in self._print_config))
            sys.exit(0)
        if config.memory.limit_heap:  # before the model and the data are loaded (HeapGrowthLimit sets it again)
            limit_heap_growth()

    def _resolve(self, config: Namespace) -> None:
        """Fills in the values a run derives from others (``--print_config`` shows them as resolved here)."""
        if config.trainer.get("precision") is None:  # unset: bf16 where the hardware computes it (precision.py)
            config.trainer.precision, why = default_precision(config.trainer.get("accelerator", "auto"))
            self._precision_note = f"trainer.precision: {config.trainer.precision} ({why}; set it to choose another)"
        # The tokenizer defaults to the pretrained model's own.
        if not config.data.tokenizer and config.model.model_name_or_path:
            config.data.tokenizer = config.model.model_name_or_path
        _resolve_monitor(config)
        root = config.trainer.default_root_dir or os.getcwd()
        # A fixed checkpoint folder (not Lightning's per-version one), so `--ckpt_path last` finds the last run.
        if not config.checkpoint.dirpath:
            config.checkpoint.dirpath = checkpoint_dir(config)
        # Lightning's default TensorBoard logger, minus its placeholder hp_metric (HParamsSummary writes the real one).
        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=root, default_hp_metric=False),
            )

    def instantiate_classes(self) -> None:
        if self._precision_note:  # said when a run is built, not when a tool only reads the config
            rank_zero_info(self._precision_note)
        # The Trainer and Lightning's callbacks check some of their settings (`max_epochs -5`, `devices 0`,
        # `checkpoint.save_top_k -3`) when built: one line too, and still before anything is written.
        try:
            super().instantiate_classes()
        except MisconfigurationException as err:
            raise MLMError(" ".join(str(err).split())) from err

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        # `enable_checkpointing false` / `logger false` switch our own callbacks off rather than clash with them.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if config.get("logger") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        # Lightning's weight averaging runs whenever it is a callback: the switch decides whether it is one.
        callbacks = [c for c in callbacks if not (isinstance(c, WeightAveragingSetting) and not c.enabled)]
        callbacks = [*callbacks, *console_callbacks(config)]  # here, so enable_progress_bar false still works
        return super()._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        # Replaces Lightning's, which copies every hyperparameter of the checkpoint over the configured ones.
        self._checkpoint_settings, self.config = reconcile_with_checkpoint(self.parser, self.config, self._args)

    def after_instantiate_classes(self) -> None:
        # The values linked from the data module exist only now: the tokenizer must be the checkpoint's.
        if self._checkpoint_settings is not None and getattr(self, "model", None) is not None:
            check_tokenizer(self.model, self._checkpoint_settings)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    # LightningCLI runs these instead of the Trainer's methods of the same name. Input that would fail in the
    # Trainer's setup is checked first, so a bad run stops before it writes logs or checkpoints.
    def _check_model(self, model: MLMModule, stage: str) -> None:
        check_max_seq_length(model.model, getattr(self.datamodule, "max_seq_length", None))
        model.compilation.decide(self.trainer.strategy.root_device.type, stage)

    def fit(self, model: MLMModule, **kwargs: Any) -> None:
        self._check_model(model, "fit")
        ckpt_path = kwargs.get("ckpt_path")
        check_resumed_data(self.datamodule, ckpt_path, self.trainer.checkpoint_callback)  # before anything is written
        # The checkpoint folder first (run_dir_guard): when another run's folder is taken, its message names the fix
        # (a folder of one's own), not one that only moves the export and then fails on the checkpoints.
        with (
            stop_gracefully(self.trainer),
            run_dir_guard(self.trainer, ckpt_path),
            explain_checkpoint_errors(ckpt_path),
        ):
            for callback in self.trainer.callbacks:  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
                if isinstance(callback, ExportOnFitEnd):
                    callback.check_before_fit(self.trainer, ckpt_path)
            self.trainer.fit(model, **kwargs)

    def validate(self, model: MLMModule, **kwargs: Any) -> None:
        self._check_model(model, "validate")
        verbose = kwargs.pop("verbose", True)
        with stop_gracefully(self.trainer), explain_checkpoint_errors(kwargs.get("ckpt_path")):
            # Not Lightning's results table: it repeats every set under each "DataLoader i" (the metrics are
            # logged without a dataloader suffix) and shows the `step` metric of GlobalStepAxis as 0.0.
            self.trainer.validate(model, verbose=False, **kwargs)
        if verbose and self.trainer.is_global_zero:
            print(results_table(self.trainer, model.val_prefixes, self._evaluated_step(kwargs.get("ckpt_path"))))

    def test(self, model: MLMModule, **kwargs: Any) -> None:
        self._check_model(model, "test")
        verbose = kwargs.pop("verbose", True)
        with stop_gracefully(self.trainer), explain_checkpoint_errors(kwargs.get("ckpt_path")):
            self.trainer.test(model, verbose=False, **kwargs)
        if verbose and self.trainer.is_global_zero:
            print(results_table(self.trainer, ["test"], self._evaluated_step(kwargs.get("ckpt_path"))))

    def _evaluated_step(self, ckpt_path: str | None) -> str:
        """The optimizer step of the checkpoint that was evaluated, in words for the table."""
        saved = self._checkpoint_settings
        return evaluated_step(saved.path if saved is not None else None, ckpt_path)


class _PlainInstantiatorFn(_InstantiatorFn):
    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        args, kwargs = plain_values(list(args)), plain_values(kwargs)
        return super().__call__(class_type, *args, applied_instantiation_links=applied_instantiation_links, **kwargs)


def _plain_instantiator(class_type: type, *args: Any, **kwargs: Any) -> Any:
    return class_type(*plain_values(list(args)), **plain_values(kwargs))


def run_cli(args: list[str] | None = None, run: bool = True, cli_class: type[MLMCLI] = MLMCLI) -> MLMCLI:
    """Builds (and by default runs) the CLI; ``args`` replaces ``sys.argv[1:]`` for in-process use."""
    return cli_class(
        MLMModule,
        MLMDataModule,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        # Always on, no settings: RandomStates (exact resume), one step axis, final metrics for every run, the
        # Custom Scalars layout, tokens/s and MFU.
        trainer_defaults={
            "default_root_dir": "logs",
            "use_distributed_sampler": False,  # MLMSampler shards by itself (mlm_lightning.data.sampling)
            "callbacks": [RandomStates(), GlobalStepAxis(), FinalValidation(), DashboardLayout(), Throughput()],
        },
        save_config_kwargs={"overwrite": True},
        parser_class=MLMArgumentParser,
        parser_kwargs={
            "description": "Masked-language-model training for BERT-family encoders. Tools around a run: "
            "export, fill-mask, inspect, train-tokenizer (python -m mlm_lightning TOOL --help).",
            "prog": command_name(),
            # Whole sentences for `--help` (LightningCLI takes the first lines of the Trainer methods' docstrings).
            **{name: {"description": text} for name, text in SUBCOMMAND_HELP.items()},
        },
    )
