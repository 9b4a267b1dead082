"""The command line: ``python -m mlm_lightning {fit,validate,test,predict} --config ...`` (a LightningCLI)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import jsonargparse.typing
import lightning as L
import torch
from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _get_module_type, _InstantiatorFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

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
from mlm_lightning.data import MLMDataModule
from mlm_lightning.errors import MLMError, Terminated
from mlm_lightning.interrupts import SIGNAL_NAMES, ctrl_c_stops_gracefully, terminated
from mlm_lightning.io.checkpoint_io import (
    UNREADABLE,
    AtomicCheckpointIO,
    explain_checkpoint_errors,
    read_checkpoint,
    unreadable_checkpoint,
)
from mlm_lightning.io.run_folder import RESUME_KEYWORDS, run_dir_guard
from mlm_lightning.model.build import check_max_seq_length
from mlm_lightning.model.module import MLMModule
from mlm_lightning.settings import plain_values
from mlm_lightning.training.flops import given_cpu_peak
from mlm_lightning.training.precision import default_precision

# Model settings that may differ from the checkpoint's when resuming (optimisation and speed): the run uses the
# configured values (MLMModule.on_train_start puts them into the restored optimizer and scheduler). Every other
# model setting describes the network and must match; unset ones are taken from the checkpoint.
RESUME_MAY_CHANGE = frozenset({"learning_rate", "weight_decay", "betas", "eps", "scheduler", "full_logits", "compile"})
# The warm-up (and wsd's decay share) belongs to the checkpoint's schedule, which a resume keeps: it may change
# only with the scheduler (a new scheduler starts a new schedule, with the configured warm-up).
WARMUP_SETTINGS = frozenset({"warmup_steps", "warmup_ratio", "decay_ratio"})
# Filled in from the data module (link_arguments), so compared once the classes are built.
LINKED_MODEL_SETTINGS = ("vocab_size", "tokenizer_name_or_path", "pad_token_id", "special_token_ids")

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


def _checkpoint_dir(config: Namespace) -> str:
    """The run's checkpoint folder: ``checkpoint.dirpath``, else ``<trainer.default_root_dir>/checkpoints``."""
    return config.checkpoint.dirpath or str(Path(config.trainer.default_root_dir or os.getcwd()) / "checkpoints")


def _last_checkpoint(folder: str) -> str | None:
    """The file ``--ckpt_path last`` resumes from: Lightning's rule (newest ``last*.ckpt``) for our one folder."""
    name = MLMCheckpoint.CHECKPOINT_NAME_LAST
    found = [p for p in Path(folder).glob("*.ckpt") if re.match(rf"^{name}(-(\d+))?$", p.stem)]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


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


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: a tuple and a list of equal items are the same (YAML has no tuples)."""
    norm = lambda v: [norm(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(plain_values(a)) == norm(plain_values(b))


class MLMCLI(LightningCLI):
    """LightningCLI with MLM wiring: data decides the vocabulary, checkpoints live in ``<root>/checkpoints``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The subcommand asked for (`fit` of `fit --help`): only its parser is built (see _add_subcommands).
        words = kwargs.get("args")
        words = sys.argv[1:] if words is None else words
        first = words[0] if isinstance(words, list) and words else None
        self._requested = first if kwargs.get("run", True) and isinstance(first, str) else None
        self._building_subcommands = False
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        full = LightningCLI.subcommands()
        if self._building_subcommands and self._requested in full:
            return {self._requested: full[self._requested]}
        return full

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # LightningCLI builds the parsers of all four subcommands (each introspects the model, the data, the
        # Trainer and every callback section) before it reads which one is asked for: 3/4 of `fit --help`'s
        # parser time went to validate, test and predict (benchmarks/README.md). A first word that is not a
        # subcommand (a typo, `--help`) still gets all of them, so its error lists the choices.
        self._building_subcommands = True
        try:
            super()._add_subcommands(parser, **kwargs)
        finally:
            self._building_subcommands = False

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
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
        parser.add_lightning_class_args(self.model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self.datamodule_class, "data", subclass_mode=self.subclass_mode_data)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # `--print_config` is taken out of jsonargparse's hands: it prints at parse time, before the values this
        # class resolves (monitor, precision, tokenizer, checkpoint folder, logger). before_instantiate_classes
        # prints them instead, as the run would use them.
        self._print_config: str | None = None
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
        if getattr(self, "_print_config", None) is not None:
            print(resolved_config_text(self._parser(self.subcommand), config, "skip_null" in self._print_config))
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
            config.checkpoint.dirpath = _checkpoint_dir(config)
        # Lightning's default TensorBoard logger, minus its placeholder hp_metric (HParamsSummary writes the real one).
        if config.trainer.logger in (None, True):
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=root, default_hp_metric=False),
            )

    def _add_instantiators(self) -> None:
        # Lightning's instantiators (they record the model's and the data's settings for load_from_checkpoint) and
        # one for every other class, all fed plain numbers: the range-checked types of mlm_lightning.settings parse
        # into int/float subclasses, which would reach checkpoints (the model's config) and break weights_only loads.
        for key, cls, subclasses in (
            ("model", self._model_class, self.subclass_mode_model),
            ("data", self._datamodule_class, self.subclass_mode_data),
        ):
            self.parser.add_instantiator(_PlainInstantiatorFn(cli=self, key=key), _get_module_type(cls), subclasses)
        self.parser.add_instantiator(_plain_instantiator, object)

    def instantiate_classes(self) -> None:
        if getattr(self, "_precision_note", None):  # said when a run is built, not when a tool only reads the config
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
        """Reconciles the model settings with those of the checkpoint to resume from or evaluate.

        LightningCLI copies every hyperparameter of a ``--ckpt_path`` file over the configured ones (and those of
        ``last`` over none), so ``--model.hidden_size 64`` with a hidden-32 checkpoint was silently ignored.
        Here a setting the user gave (command line or config file) that differs from the checkpoint's is an error,
        unless it is one that may change on resume (:data:`RESUME_MAY_CHANGE`); unset ones come from the
        checkpoint. A bad or missing file gets one message, before anything is written.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in RESUME_KEYWORDS and "://" not in ckpt_path and not os.path.isfile(ckpt_path):
            raise unreadable_checkpoint(ckpt_path)
        path = _last_checkpoint(_checkpoint_dir(config)) if ckpt_path == "last" else ckpt_path
        self._checkpoint_settings: tuple[str, dict[str, Any]] | None = None
        if not path or path in RESUME_KEYWORDS or "://" in path:  # hpc, registry, remote: Lightning's own way
            return
        # mmap: only the small hyperparameter record is read from a large file. Weights-only unless the user trusts
        # the file (--weights_only false): a crafted checkpoint is refused here, before anything runs or is written.
        ckpt = read_checkpoint(path, map_location="cpu", weights_only=config.get("weights_only"), mmap=True)
        saved = ckpt.get("hyper_parameters") or {}
        saved = {k: v for k, v in saved.items() if not k.startswith("_")}  # LightningCLI's `_instantiator`
        self._checkpoint_settings = (path, saved)
        given = self.parser.parse_args(self._args, defaults=False)[subcommand] if self._args is not None else config
        given = given.get("model") or Namespace()
        taken, changed = {}, []
        new_schedule = "scheduler" in given and not _same(given["scheduler"], saved.get("scheduler"))
        for key, value in saved.items():
            if key in LINKED_MODEL_SETTINGS or _same(config.model.get(key), value):
                continue
            if key not in given:
                taken[key] = value  # not set: the checkpoint's
            elif key in RESUME_MAY_CHANGE or (key in WARMUP_SETTINGS and new_schedule):
                changed.append(f"model.{key} {value} -> {plain_values(given[key])}")
            else:
                raise MLMError(
                    f"model.{key} is {plain_values(given[key])} but the checkpoint {path} has {value}: it cannot "
                    f"change when resuming (only {', '.join(sorted(RESUME_MAY_CHANGE))} can; the warm-up only with "
                    f"model.scheduler). Leave model.{key} unset to take the checkpoint's value"
                )
        if changed:
            rank_zero_info(f"settings that differ from the checkpoint {path}, used from here on: {', '.join(changed)}")
        if taken:
            self.config = self.parser.parse_object({subcommand: {"model": taken}}, self.config)

    def after_instantiate_classes(self) -> None:
        # The values linked from the data module exist only now: the tokenizer must be the checkpoint's.
        saved = getattr(self, "_checkpoint_settings", None)
        model = getattr(self, "model", None)
        if not saved or model is None:
            return
        path, hparams = saved
        if "vocab_size" in hparams and hparams["vocab_size"] != model.hparams.vocab_size:
            raise MLMError(
                f"the tokenizer ({model.hparams.tokenizer_name_or_path}) has {model.hparams.vocab_size} tokens but "
                f"the checkpoint {path} was trained with {hparams['vocab_size']} "
                f"({hparams.get('tokenizer_name_or_path')}): set data.tokenizer to the checkpoint's"
            )
        # A new model's special ids (its padding index) are the tokenizer's: another tokenizer with the same size
        # would silently move them. (A pretrained model's own ids are checked against the tokenizer when loaded.)
        ids = {"special_token_ids": hparams.get("special_token_ids")}
        if not hparams.get("model_name_or_path"):
            ids["pad_token_id"] = hparams.get("pad_token_id")
        for key, value in ids.items():
            if value is not None and value != model.hparams[key]:
                raise MLMError(
                    f"the tokenizer ({model.hparams.tokenizer_name_or_path}) has the special-token ids "
                    f"{model.hparams[key]} but the checkpoint {path} was trained with {value} "
                    f"({hparams.get('tokenizer_name_or_path')}): set data.tokenizer to the checkpoint's"
                )
        if hparams.get("tokenizer_name_or_path") not in (None, model.hparams.tokenizer_name_or_path):
            rank_zero_warn(
                f"the checkpoint {path} was trained with the tokenizer {hparams['tokenizer_name_or_path']}, this run "
                f"uses {model.hparams.tokenizer_name_or_path}: make sure they are the same tokenizer"
            )

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
        with report_sigterm(self.trainer), run_dir_guard(self.trainer, ckpt_path), explain_checkpoint_errors(ckpt_path):
            for callback in self.trainer.callbacks:
                if isinstance(callback, ExportOnFitEnd):
                    callback.check_before_fit(self.trainer, ckpt_path)
            self.trainer.fit(model, **kwargs)

    def validate(self, model: MLMModule, **kwargs: Any) -> None:
        self._check_model(model, "validate")
        verbose = kwargs.pop("verbose", True)
        with report_sigterm(self.trainer), explain_checkpoint_errors(kwargs.get("ckpt_path")):
            # Not Lightning's results table: it repeats every set under each "DataLoader i" (the metrics are
            # logged without a dataloader suffix) and shows the `step` metric of GlobalStepAxis as 0.0.
            self.trainer.validate(model, verbose=False, **kwargs)
        if verbose and self.trainer.is_global_zero:
            print(results_table(self.trainer, model.val_prefixes, self._evaluated_step(kwargs.get("ckpt_path"))))

    def test(self, model: MLMModule, **kwargs: Any) -> None:
        self._check_model(model, "test")
        verbose = kwargs.pop("verbose", True)
        with report_sigterm(self.trainer), explain_checkpoint_errors(kwargs.get("ckpt_path")):
            self.trainer.test(model, verbose=False, **kwargs)
        if verbose and self.trainer.is_global_zero:
            print(results_table(self.trainer, ["test"], self._evaluated_step(kwargs.get("ckpt_path"))))

    def _evaluated_step(self, ckpt_path: str | None) -> str:
        """The optimizer step of the checkpoint that was evaluated, in words for the table."""
        saved = getattr(self, "_checkpoint_settings", None)
        if saved is None:
            return "the configured model (no --ckpt_path)" if not ckpt_path else "?"
        try:  # mmap: only the small record is read
            step = torch.load(saved[0], map_location="cpu", weights_only=True, mmap=True).get("global_step", "?")
        except Exception:  # it was read a moment ago; the table matters more than the step in it
            step = "?"
        return f"{step} ({saved[0]})"


# Model settings that only describe a new (from-scratch) model: a pretrained one has its own.
NEW_MODEL_ONLY = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "dropout",
    "embedding_size",
    "config_overrides",
)


def resolved_config_text(parser: LightningArgumentParser, config: Namespace, skip_null: bool = False) -> str:
    """The configuration as YAML, as the run resolves it; a pretrained model's unused settings marked."""
    config = config.clone()
    for key in ("config", "__path__", "print_config"):
        config.pop(key, None)
    text = parser.dump(config, skip_none=skip_null, skip_validation=True)
    if not config.model.get("model_name_or_path"):
        return text.rstrip("\n")
    lines, section = [], None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line.split(":", 1)[0]
        key = line.strip().split(":", 1)[0]
        if section == "model" and line.startswith("  ") and not line.startswith("   ") and key in NEW_MODEL_ONLY:
            line += "  # not used: the pretrained model (model.model_name_or_path) has its own"
        lines.append(line)
    return "\n".join(lines)


def results_table(trainer: Trainer, prefixes: list[str], step: str) -> str:
    """``validate``/``test``'s table: one row per set (loss, perplexity, accuracy), as ``evaluate`` prints it."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    lines = [f"checkpoint step: {step}", "", "| set | loss | perplexity | accuracy |", "| --- | ---: | ---: | ---: |"]
    for prefix in prefixes:
        if f"{prefix}/loss" not in metrics:
            continue
        name = prefix.partition("/")[2] or ("validation" if prefix == "val" else prefix)
        figures = [metrics.get(f"{prefix}/{key}", float("nan")) for key in ("loss", "perplexity", "accuracy")]
        lines.append(f"| {name} | {figures[0]:.4f} | {figures[1]:.2f} | {figures[2]:.2%} |")
    return "\n".join(lines)


def check_resumed_data(datamodule: Any, ckpt_path: str | None, callback: Any) -> None:
    """A resume on data other than the checkpoint's: the error (or warning) now, before any output is written.

    The data module checks again when Lightning restores it (``load_state_dict``), for runs built from Python.
    """
    if not ckpt_path or not isinstance(datamodule, MLMDataModule):
        return
    if ckpt_path == "last":
        ckpt_path = _last_checkpoint(callback.dirpath) if isinstance(callback, ModelCheckpoint) else None
    if not ckpt_path or "://" in ckpt_path or not os.path.isfile(ckpt_path):
        return
    try:
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except UNREADABLE:
        return  # Lightning's restore reports it, with its own message
    datamodule.check_resumed_data((saved.get(type(datamodule).__qualname__) or {}).get("identity"), ckpt_path)


@contextlib.contextmanager
def report_sigterm(trainer: Trainer) -> Iterator[None]:
    """Turns Lightning's ``SIGTERMException`` (a ``SystemExit`` with status 0) into :class:`Terminated` (status 143).

    Lightning notes a ``SIGTERM`` and stops after the current training batch (MLMCheckpoint saves ``last.ckpt``
    there, on every rank together, or, in a validation, the state from before it); this says so, and where to
    continue from, instead of looking like a success. The first Ctrl-C (``SIGINT``) is treated the same way
    (status 130); a second one stops at once, keeping the previous ``last.ckpt`` whole.
    """

    before = signal.getsignal(signal.SIGTERM)

    def stop_after_batch() -> None:
        if signal.getsignal(signal.SIGTERM) is before:  # Lightning's handlers are not up: no loop to stop runs
            raise _stopped(trainer, signal.SIGINT)
        trainer._signal_connector.received_sigterm = True  # what Lightning's loops check after each batch

    with ctrl_c_stops_gracefully(stop_after_batch) as ctrl_c:
        try:
            yield
        except SIGTERMException as err:
            raise _stopped(trainer, signal.SIGINT if ctrl_c else signal.SIGTERM) from err
        except SystemExit as err:  # Lightning's exit after a KeyboardInterrupt: the second Ctrl-C
            if not ctrl_c:
                raise
            raise _stopped(trainer, signal.SIGINT, " (a second Ctrl-C, while stopping)") from err


def _stopped(trainer: Trainer, signum: int, how: str = "") -> Terminated:
    """The one-line message of a run stopped by ``signum``: where it was, and the checkpoint to continue from."""
    name = SIGNAL_NAMES[signum] + how
    where = f"{trainer.state.fn.value if trainer.state.fn else 'the run'} at step {trainer.global_step}"
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") if callback is not None else ""
    if not last or not os.path.isfile(last):
        return terminated(signum, f"stopped by {name} ({where}); no checkpoint was saved")
    try:
        step = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except Exception:  # the message matters more than the step number in it
        step = "?"
    return terminated(
        signum,
        f"stopped by {name} ({where}); the last checkpoint is {last} (step {step}): continue with --ckpt_path last",
    )


class _PlainInstantiatorFn(_InstantiatorFn):
    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        args, kwargs = plain_values(list(args)), plain_values(kwargs)
        return super().__call__(class_type, *args, applied_instantiation_links=applied_instantiation_links, **kwargs)


def _plain_instantiator(class_type: type, *args: Any, **kwargs: Any) -> Any:
    return class_type(*plain_values(list(args)), **plain_values(kwargs))


class MLMArgumentParser(LightningArgumentParser):
    """The CLI's parser: a bad key, flag or value is reported in one line, without jsonargparse's full usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("MLM_LIGHTNING_DEBUG"):
            super().error(message, ex)  # internal trial parses, or the user asked for everything
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        message = _linked(_out_of_range(" ".join(message.split())))
        sys.stderr.write(f"error: {message} (every setting: {prog} --help)\n")
        sys.exit(2)


SUBCOMMAND_HELP = {
    "fit": "Trains the model, validating on the way; --ckpt_path last resumes the run of the same folder.",
    "validate": "Computes validation loss, perplexity and masked-token accuracy of a checkpoint (--ckpt_path).",
    "test": "Computes loss, perplexity and masked-token accuracy of a checkpoint (--ckpt_path) on data.test_files, "
    "or on the validation split when there are none.",
    "predict": "Runs the model's predict_step (top-1 predictions at the masked positions of the validation split) "
    "for a checkpoint (--ckpt_path). The command line does not save them: use trainer.predict from Python.",
}
_NOT_OF_TYPE = re.compile(r'Parser key "(?P<key>[^"]+)":.*?Not of type (?P<type>\w+): (?P<why>.*?)(?: - |$)')


def _out_of_range(message: str) -> str:
    """jsonargparse's message for a value outside a range type (mlm_lightning.settings) as ``KEY must be RANGE``."""
    found = _NOT_OF_TYPE.search(message)
    kind = getattr(jsonargparse.typing, found["type"], None) if found else None
    if found is None or not hasattr(kind, "_expression"):
        return message
    rule = re.sub(r"v(<=|>=|<|>|==|!=)", r"\1 ", kind._expression)
    what = "an integer" if kind._type is int else "a number"
    optional = ", or null" if "NoneType" in message else ""  # an optional setting (`int | None`)
    given = re.search(r"Given value: (\S+)", message) or re.search(r"'([^']*)'$", found["why"])
    value = given[1] if given else found["why"].split(" ")[0]
    # A setting of a nested class (data.masking.mlm_probability) is reported one "Parser key" per level.
    key = ".".join(re.findall(r'Parser key "([^"]+)"', message[: found.start("type")]))
    return f"{key} must be {what} {rule}{optional}, got {value}"


_LINKED = re.compile(r'Linked "(?P<key>[^"]+)" must be given via "data\.[^"]+"\.?')


def _linked(message: str) -> str:
    """jsonargparse's message for a setting the data module fills in (``link_arguments``), in the user's terms."""
    found = _LINKED.search(message)
    if found is None:
        return message
    return (
        f"{found['key']} is taken from the tokenizer (data.tokenizer, or the pretrained model's own): it cannot be set"
    )


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
            "prog": _prog(),
            # Whole sentences for `--help` (LightningCLI takes the first lines of the Trainer methods' docstrings).
            **{name: {"description": text} for name, text in SUBCOMMAND_HELP.items()},
        },
    )


def parse_config(args: list[str]) -> Namespace:
    """The resolved configuration of ``fit`` arguments (``--config`` files and overrides), nothing built."""
    return run_cli(args, run=False, cli_class=_ConfigOnly).config
