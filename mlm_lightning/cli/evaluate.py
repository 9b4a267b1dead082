"""``python -m mlm_lightning evaluate``: the command line of :mod:`mlm_lightning.tools.evaluate`."""

from __future__ import annotations

import argparse
from typing import NoReturn

from mlm_lightning.cli.config import parse_config
from mlm_lightning.errors import MLMError
from mlm_lightning.tools.evaluate import check_output, evaluate_models, format_table, write_output


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad or missing flag as one :class:`MLMError` line instead of usage and exit."""

    def error(self, message: str) -> NoReturn:
        raise MLMError(f"evaluate: {message} (every option: python -m mlm_lightning evaluate --help)")


def evaluate_command(args: list[str]) -> int:
    """``evaluate --models M [M ...] [--output FILE] [fit arguments]``: prints (and writes) the table."""
    parser = _Parser(
        prog="python -m mlm_lightning evaluate",
        description="Scores models on the validation sets of a fit configuration (--config, --data.* flags) with "
        "the same fixed masks: masked tokens, loss, perplexity, accuracy, and per-word loss and perplexity "
        "(comparable across tokenizers). Every other argument is read as by `fit`.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="Models to score: export or model folders, fit checkpoints (.ckpt), pkg:// paths or hub names.",
    )
    parser.add_argument("--output", default=None, help="Also write the table to this .json or .csv file.")
    parser.add_argument(
        "--weights_only",
        choices=("true", "false"),
        default="true",
        help="Read checkpoints' tensors and plain values only (a file that needs more is refused: it could run "
        "code). false only for checkpoints you trust.",
    )
    known, rest = parser.parse_known_args(args)
    output = check_output(known.output)
    config = parse_config(rest)
    rows = evaluate_models(known.models, config, known.weights_only == "true")
    print(format_table(rows))
    if output is not None:
        write_output(rows, output)
        print(f"written to {output}")
    return 0
