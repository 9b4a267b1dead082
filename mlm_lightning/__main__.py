"""Entry point: ``python -m mlm_lightning <subcommand> ...``."""

from __future__ import annotations

import os
import sys

from mlm_lightning.errors import MLMError


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; user errors become one readable line and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from mlm_lightning.cli import run_cli

        run_cli(argv)
    except MLMError as err:
        if os.environ.get("MLM_LIGHTNING_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
