"""A ``fit`` configuration parsed and resolved, nothing built: what ``evaluate``, ``inspect``, ``probe`` read."""

from __future__ import annotations

from jsonargparse import Namespace

from mlm_lightning.cli.lightning_cli import MLMCLI, run_cli


class _ConfigOnly(MLMCLI):
    """Parses and resolves a configuration without building anything (for ``inspect``)."""

    def instantiate_classes(self) -> None:
        pass


def parse_config(args: list[str]) -> Namespace:
    """The resolved configuration of ``fit`` arguments (``--config`` files and overrides), nothing built."""
    return run_cli(args, run=False, cli_class=_ConfigOnly).config
