"""Every private name of another library that this package relies on, where, and why: one list to check on upgrades.

A private name can change in any release without notice, so each is listed here and checked by
``tests/test_private_api.py`` (it exists, with the signature used here): an upgrade that breaks one fails that test
by name instead of a run. ``pyproject.toml`` caps lightning and transformers below the next untested minor.

Tested with lightning 2.6.6, transformers 5.24.0 (the GPU benchmark also with 5.17), datasets 5.2, jsonargparse 4.53,
torch 2.13.

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
    # ---------------------------------------------------------------------------------- LightningCLI (cli.py)
    PrivateName(
        "lightning.pytorch.cli._InstantiatorFn",
        "cli._PlainInstantiatorFn (subclass; __init__(cli, key), __call__(..., applied_instantiation_links))",
        "Lightning's instantiator records the model's and data's settings for load_from_checkpoint; ours also "
        "turns range-checked int/float subclasses into plain numbers, or weights_only loads fail",
    ),
    PrivateName(
        "lightning.pytorch.cli._get_module_type",
        "cli.MLMCLI._add_instantiators",
        "registers that instantiator for the same class Lightning registers its own for",
    ),
    PrivateName(
        "lightning.pytorch.cli.LightningCLI._add_instantiators",
        "cli.MLMCLI._add_instantiators (override)",
        "the only hook where the CLI's instantiators are registered",
    ),
    PrivateName(
        "lightning.pytorch.cli.LightningCLI._model_class",
        "cli.MLMCLI._add_instantiators (read; also _datamodule_class)",
        "the configured model/data classes, which the instantiators are keyed by",
    ),
    PrivateName(
        "lightning.pytorch.cli.LightningCLI._instantiate_trainer",
        "cli.MLMCLI._instantiate_trainer (override, calls super)",
        "the one place the Trainer's callbacks are assembled: `enable_checkpointing false` / `logger false` drop "
        "our callbacks instead of clashing, and the console callbacks follow `enable_progress_bar`",
    ),
    PrivateName(
        "lightning.pytorch.cli.LightningCLI._parse_ckpt_path",
        "cli.MLMCLI._parse_ckpt_path (override, replaces it)",
        "Lightning silently copies a checkpoint's hyperparameters over the configured ones; ours refuses a "
        "conflicting setting and reads the file once, with one readable error for a bad file",
    ),
    PrivateName(
        "lightning.pytorch.cli.LightningCLI._add_subcommands",
        "cli.MLMCLI._add_subcommands (override, calls it with MLMCLI.subcommands restricted)",
        "LightningCLI builds every subcommand's parser before it knows which one is asked for: `fit --help` built "
        "four; there is no public way to build only the one requested",
    ),
    PrivateName(
        "lightning.pytorch.cli.LightningCLI._parser",
        "cli.MLMCLI.before_instantiate_classes (--print_config of the resolved values)",
        "the parser of the running subcommand, which dumps its configuration as --print_config would",
    ),
    # ------------------------------------------------------------------------- ModelCheckpoint (last_checkpoint.py)
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._should_skip_saving_checkpoint",
        "last_checkpoint.MLMCheckpoint._write_last",
        "the rules Lightning applies before any save (sanity check, fast_dev_run, step already saved)",
    ),
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._monitor_candidates",
        "last_checkpoint.MLMCheckpoint._write_last",
        "the metrics that format_checkpoint_name fills a last.ckpt name template with",
    ),
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._should_remove_checkpoint",
        "last_checkpoint.MLMCheckpoint._write_last",
        "whether the previous last checkpoint may be deleted (not when it is the best one or outside dirpath)",
    ),
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._remove_checkpoint",
        "last_checkpoint.MLMCheckpoint._write_last",
        "deletes it through the strategy (rank zero, remote file systems)",
    ),
    PrivateName(
        "lightning.pytorch.callbacks.ModelCheckpoint._link_checkpoint",
        "last_checkpoint.MLMCheckpoint._link_checkpoint (override, staticmethod)",
        "`save_last: link` deletes last.ckpt before creating the link: a crash between leaves none; ours renames "
        "a new link over the old one",
    ),
    PrivateName(
        "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector.received_sigterm",
        "callbacks.checkpoint.MLMCheckpoint._sigterm, interrupts.stop_gracefully (via trainer._signal_connector)",
        "under DDP, tells every rank that one received SIGTERM, so all stop after the same batch; a first Ctrl-C "
        "sets it to stop like SIGTERM (the loops read this flag; Trainer.received_sigterm is read-only)",
    ),
    # -------------------------------------------------------------------------------------------------- others
    PrivateName(
        "jsonargparse.typing.restricted_number_type._expression",
        "cli.messages._out_of_range (also `_type`)",
        "the rule of a range type (`v>0`), to say `KEY must be an integer > 0` instead of jsonargparse's message",
    ),
    PrivateName(
        "transformers.PreTrainedTokenizerFast._tokenizer",
        "token_stream (a copy of the tokenizer whose backend has its special tokens renamed)",
        "the backend tokenizer has no public setter; the copy keeps text that spells a special token as text",
    ),
    PrivateName(
        "datasets.Dataset._indices",
        "token_stream.document_lengths (is a selection applied?)",
        "lengths are read from the Arrow offsets, which match the dataset's rows only without an index mapping "
        "(after select/shuffle); flatten_indices() on every call would copy the whole table",
    ),
    # ---------------------------------------------------------------------------------------- transformers (others)
    PrivateName(
        "transformers.PreTrainedModel._no_split_modules",
        "sharding.layer_classes (read on the model: FSDP's auto-wrap units)",
        "transformers' per-model list of the modules that stay whole on one device (each family's layer class) "
        "has no public getter; it is what device_map='auto' splits by",
    ),
    # -------------------------------------------------------------------------------------- torch (compilation.py)
    PrivateName(
        "torch._dynamo",
        "compilation.CompilePolicy.whole_loss (torch._dynamo.maybe_mark_dynamic on the masked positions, labels)",
        "torch's documented way to mark one dimension dynamic for torch.compile lives in this private module: the "
        "masked count changes every batch, and without the mark each new count would recompile the whole loss",
    ),
)
