"""A ``fit`` configuration parsed and resolved, nothing built: what ``evaluate``, ``inspect``, ``probe`` read."""

from __future__ import annotations

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from mlm_lightning.cli.lightning_cli import MLMCLI, run_cli


class _ConfigOnly(MLMCLI):
    """Parses and resolves a configuration without building anything (for ``inspect``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        # `fit`'s own arguments, which a config saved by `fit` (--print_config, lightning_logs/version_N/config.yaml)
        # holds: accepted so that file is read as it is; the tools decide themselves which model to use.
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="Read and ignored (a fit argument).")
        parser.add_argument("--weights_only", type=bool | None, default=None, help="Read and ignored (a fit argument).")

    def instantiate_classes(self) -> None:
        pass


def parse_config(args: list[str]) -> Namespace:
    """The resolved configuration of ``fit`` arguments (``--config`` files and overrides), nothing built."""
    return run_cli(args, run=False, cli_class=_ConfigOnly).config
