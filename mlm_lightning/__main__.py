"""Entry point: ``python -m mlm_lightning <subcommand> ...``."""

from __future__ import annotations

import os
import sys

from mlm_lightning.errors import MLMError


def _user_error(err: BaseException) -> MLMError | None:
    """The MLMError behind ``err``, also when a library re-raised it wrapped in another exception."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MLMError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; user errors become one readable line and exit status 2.

    Set ``MLM_LIGHTNING_DEBUG=1`` to get the full traceback instead.
    """
    try:
        from mlm_lightning.cli import run_cli

        run_cli(None if argv is None else list(argv))  # None: LightningCLI reads sys.argv itself
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None or os.environ.get("MLM_LIGHTNING_DEBUG"):
            raise
        print(f"error: {' '.join(str(user_error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
