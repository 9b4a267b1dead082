"""Every private name of another library that this package relies on, where, and why: one list to check on upgrades.

A private name can change in any release without notice, so each is listed here and checked by
``tests/test_private_api.py`` (it exists, with the signature used here): an upgrade that breaks one fails that test
by name instead of a run. ``pyproject.toml`` caps lightning and transformers below the next untested minor.

Tested with lightning 2.6.6, transformers 5.24.0 (the GPU benchmark also with 5.17), datasets 5.2, jsonargparse 4.53,
torch 2.13.

``tests/test_private_api.py`` also finds every use in the package's source and fails on one missing here (or on an
entry no longer used): ``from lib import _x``, ``obj._x``, ``getattr(obj, "_x")``, ``self._x``/``super()._x``/
``def _x`` where a base class of another library defines ``_x``, and the attributes read on the Trainer's loops and
connectors, which are private classes (``_FitLoop``, ``_TrainingEpochLoop``, ``_EvaluationLoop``) behind public
attributes (``trainer.fit_loop``): an attribute of a private class is private, whatever its own name.

Not listed: the package's own private names (``test_style`` forbids importing them across modules), and private
*module paths* in warning filters (``quiet.py``: a renamed module only makes its filter inert, and
``tests/test_console.py`` checks that a tiny ``fit`` prints none of those warnings).
"""

from __future__ import annotations

from typing import NamedTuple


class PrivateName(NamedTuple):
    """One private name of another library that the package uses."""

    name: str  # importable owner and attribute: "package.module.Owner.attribute"
    used_in: str  # where, in this package
    why: str  # what the public API lacks


PRIVATE_NAMES: tuple[PrivateName, ...] = (
    # ------------------------------------------------------------------------ LightningCLI (cli/lightning_cli.py)
    PrivateName(
        "lightning.pytorch.cli._InstantiatorFn",
        "cli.lightning_cli._PlainInstantiatorFn (subclass: __init__(cli, key), __call__ applied_instantiation_links)",
        "Lightning's instantiator records the model's and data's settings for load_from_checkpoint; ours also "
        "turns range-checked int/float subclasses into plain numbers, or weights_only loads fail. Registered with "
        "the public parser.add_instantiator in before_instantiate_classes; plain values in the configuration are "
        "not enough (instantiation re-applies the types), and only this class records the settings",
    ),
    PrivateName(
        "lightning.pytorch.cli.LightningCLI._instantiate_trainer",
        "cli.lightning_cli.MLMCLI._instantiate_trainer (override, calls super)",
        "the one place where the callback sections and trainer_defaults' callbacks are one list before the Trainer "
        "is built: `enable_checkpointing false` / `logger false` drop our callbacks there (the Trainer refuses a "
        "ModelCheckpoint without checkpointing when built), and the console callbacks follow `enable_progress_bar`. "
        "The public instantiate_trainer(**kwargs) can add Trainer arguments but not remove a configured callback",
    ),
    PrivateName(
        "lightning.pytorch.cli.LightningCLI._parse_ckpt_path",
        "cli.lightning_cli.MLMCLI._parse_ckpt_path (override, replaces it; cli.resume.reconcile_with_checkpoint)",
        "Lightning silently copies a checkpoint's hyperparameters over the configured ones between parse_arguments "
        "and before_instantiate_classes (no public hook can stop it); ours refuses a conflicting setting and reads "
        "the file once, with one readable error for a bad file",
    ),
    # ------------------------------------------------------------------ ModelCheckpoint (callbacks/checkpoint.py)
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._should_skip_saving_checkpoint",
        "callbacks.checkpoint.MLMCheckpoint._write_last",
        "the rules Lightning applies before any save (sanity check, fast_dev_run, step already saved)",
    ),
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._monitor_candidates",
        "callbacks.checkpoint.MLMCheckpoint._write_last",
        "the metrics that format_checkpoint_name fills a last.ckpt name template with",
    ),
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._should_remove_checkpoint",
        "callbacks.checkpoint.MLMCheckpoint._write_last",
        "whether the previous last checkpoint may be deleted (not when it is the best one or outside dirpath)",
    ),
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._remove_checkpoint",
        "callbacks.checkpoint.MLMCheckpoint._write_last",
        "deletes it through the strategy (rank zero, remote file systems)",
    ),
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._link_checkpoint",
        "callbacks.checkpoint.MLMCheckpoint._link_checkpoint (override, staticmethod)",
        "`save_last: link` deletes last.ckpt before creating the link: a crash between leaves none; ours renames "
        "a new link over the old one",
    ),
    # ------------------------------------------------------------------------------- Trainer: signals and module
    PrivateName(
        "lightning.pytorch.Trainer._signal_connector",
        "callbacks.checkpoint.MLMCheckpoint._sigterm, interrupts.stop_gracefully",
        "the object whose received_sigterm flag the loops read (below)",
    ),
    PrivateName(
        "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector.received_sigterm",
        "callbacks.checkpoint.MLMCheckpoint._sigterm, interrupts.stop_gracefully (via trainer._signal_connector)",
        "under DDP, tells every rank that one received SIGTERM, so all stop after the same batch; a first Ctrl-C "
        "sets it to stop like SIGTERM (the loops read this flag; Trainer.received_sigterm is read-only)",
    ),
    PrivateName(
        "lightning.pytorch.LightningModule._trainer",
        "model.module.MLMModule (setup, on_load_checkpoint, the compiled batch's padding)",
        "whether the module is attached to a Trainer: the public `trainer` property raises when it is not "
        "(a module used alone, or restored before fit)",
    ),
    # ---------------------------------------------------------- Trainer loops: trainer.fit_loop and what it holds
    # `trainer.fit_loop` is public, its class `_FitLoop` and the loops and trackers inside it are not: no public
    # API says where training is inside an epoch, or runs a validation outside the loop's schedule.
    PrivateName(
        "lightning.pytorch.loops.fit_loop._FitLoop.epoch_loop",
        "callbacks.checkpoint, callbacks.nonfinite, callbacks.validation, data.datamodule",
        "the training epoch loop, which holds the batch counters and the validation loop used below",
    ),
    PrivateName(
        "lightning.pytorch.loops.fit_loop._FitLoop.state_dict",
        "callbacks.checkpoint.MLMCheckpoint.on_validation_start",
        "the loops' counters before a validation, saved in place of the later ones when SIGTERM stops it",
    ),
    PrivateName(
        "lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop.batch_progress",
        "callbacks.checkpoint, callbacks.validation, data.datamodule",
        "the epoch's batch counters (below)",
    ),
    PrivateName(
        "lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop.batch_idx",
        "callbacks.nonfinite.NonFiniteLoss._where",
        "the batch within the epoch, for the message that names where the loss became non-finite",
    ),
    PrivateName(
        "lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop.val_loop",
        "callbacks.validation.ValidateBeforeFit",
        "the validation loop of fit, run once before the first step with fit's dataloaders and logging",
    ),
    PrivateName(
        "lightning.pytorch.loops.evaluation_loop._EvaluationLoop.run",
        "callbacks.validation.ValidateBeforeFit",
        "runs that validation (trainer.validate would start a second run with its own state)",
    ),
    PrivateName(
        "lightning.pytorch.loops.progress._BatchProgress.is_last_batch",
        "callbacks.checkpoint.MLMCheckpoint.on_train_batch_end, callbacks.validation.FinalValidation",
        "whether this batch ends the epoch: last.ckpt is written there, not in on_train_epoch_end, so a resume "
        "does not train an extra batch",
    ),
    PrivateName(
        "lightning.pytorch.loops.progress._BatchProgress.current",
        "data.datamodule (the resumable loaders' progress)",
        "this run's batch counters, including a resumed run's (below)",
    ),
    PrivateName(
        "lightning.pytorch.loops.progress._ProcessedTracker.processed",
        "data.datamodule (the resumable loaders' progress)",
        "the batches trained in this epoch, where a resumed loader continues from",
    ),
    # -------------------------------------------------------------------------------------------------- others
    PrivateName(
        "jsonargparse.typing.restricted_number_type._expression",
        "cli.messages._out_of_range",
        "the rule of a range type (`v>0`), to say `KEY must be an integer > 0` instead of jsonargparse's message",
    ),
    PrivateName(
        "jsonargparse.typing.restricted_number_type._type",
        "cli.messages._out_of_range",
        "the number type of a range type, to say `an integer` or `a number`",
    ),
    PrivateName(
        "transformers.PreTrainedTokenizerFast._tokenizer",
        "data.token_stream (a copy of the tokenizer whose backend has its special tokens renamed)",
        "the backend tokenizer has no public setter; the copy keeps text that spells a special token as text",
    ),
    PrivateName(
        "datasets.Dataset._indices",
        "data.token_stream.document_lengths (is a selection applied?)",
        "lengths are read from the Arrow offsets, which match the dataset's rows only without an index mapping "
        "(after select/shuffle); flatten_indices() on every call would copy the whole table",
    ),
    PrivateName(
        "transformers.PreTrainedModel._no_split_modules",
        "model.sharding.layer_classes (read on the model: FSDP's auto-wrap units)",
        "transformers' per-model list of the modules that stay whole on one device (each family's layer class) "
        "has no public getter; it is what device_map='auto' splits by",
    ),
    PrivateName(
        "torch._dynamo",
        "compilation.CompilePolicy.whole_loss (torch._dynamo.maybe_mark_dynamic on the masked positions, labels)",
        "torch's documented way to mark one dimension dynamic for torch.compile lives in this private module: the "
        "masked count changes every batch, and without the mark each new count would recompile the whole loss",
    ),
)
