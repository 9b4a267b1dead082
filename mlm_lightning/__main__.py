"""Entry point: ``python -m mlm_lightning <subcommand> ...``.

``fit``, ``validate``, ``test`` and ``predict`` go to the LightningCLI (:mod:`mlm_lightning.cli.lightning_cli`).
The tools around a run are plain typed functions whose signatures and docstrings give their flags and ``--help``:
``export``, ``extend-vocab``, ``fill-mask``, ``train-tokenizer``; ``inspect`` and ``shard`` take the same arguments
as ``fit`` (``shard`` also ``--output``), and ``evaluate`` those plus ``--models`` and ``--output``; ``probe`` takes
``--models``, ``--task`` and its own flags, and optionally ``fit`` arguments.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from mlm_lightning.errors import MLMError

# subcommand -> (module, function, argument that takes several values without brackets, whether positional)
TOOLS: dict[str, tuple[str, str, str | None, bool]] = {
    "export": ("mlm_lightning.tools.export", "export", None, False),
    "fill-mask": ("mlm_lightning.tools.fill_mask", "fill_mask_command", "sentences", True),
    "extend-vocab": ("mlm_lightning.tools.extend_vocab", "extend_vocab", "files", False),
    "train-tokenizer": ("mlm_lightning.tools.train_tokenizer", "train_tokenizer", "files", False),
}

# `python -m mlm_lightning --help`, written out so it needs no Lightning import (seconds); each subcommand's own
# `--help` lists its settings.
USAGE = """usage: python -m mlm_lightning SUBCOMMAND [options]

Masked-language-model training for BERT-family encoders.

training (a LightningCLI: --config YAML files and --section.key flags):
  fit              train a model (validation, checkpoints and export on the way)
  validate         evaluate a checkpoint on the validation split
  test             evaluate a checkpoint on the test split
  predict          run the model over the validation split

tools around a run:
  inspect          the corpus report of a fit configuration, without training
  shard            tokenize a fit configuration's text into verified shards (a folder or s3://...)
  evaluate         score models (base, exports, checkpoints) on its validation sets, side by side
  probe            train and test a classifier on a labelled task with each model: did adaptation help it?
  export           turn a checkpoint into a Hugging Face model folder
  fill-mask        the most likely tokens for each [MASK] of a sentence
  train-tokenizer  train a family's tokenizer (WordPiece, byte-level BPE, Unigram) on text files
  extend-vocab     add a domain corpus's most-split words to a model's vocabulary

Every setting of a subcommand: python -m mlm_lightning SUBCOMMAND --help"""


def _tool_parser(name: str, func: Callable[..., Any], nargs_arg: str | None, positional: bool) -> Any:
    """A jsonargparse parser for ``func``: one typed flag per parameter, help from its docstring.

    jsonargparse reads a list flag as one JSON/YAML value (``--files '[a, b]'``); ``nargs_arg`` instead takes
    shell-style words (``--files a b``, or positional sentences), which is what these tools' users type.

    Not ``jsonargparse.auto_cli``/``CLI`` (tried with jsonargparse 4.53): they build the same parser with
    ``add_function_arguments`` but give no way to declare one parameter with ``nargs``: ``--files a.txt b.txt``
    and the positional ``fill-mask 'the [MASK] king.'`` both fail ('Parser key "files": Expected a <class
    'list'>'); only ``--files '[a.txt, b.txt]'`` or ``--files+=a.txt --files+=b.txt`` work. Their subcommand mode
    also imports every tool up front. So the parser is built here, by the same jsonargparse calls, plus that one
    argparse ``nargs`` argument.
    """
    from docstring_parser import parse as parse_docstring
    from jsonargparse import ArgumentParser

    doc = parse_docstring(func.__doc__ or "")
    parser = ArgumentParser(prog=f"python -m mlm_lightning {name}", description=doc.short_description)
    if nargs_arg:
        text = next((p.description for p in doc.params if p.arg_name == nargs_arg), None)
        if positional:
            parser.add_argument(nargs_arg, nargs="*", default=[], help=text)
        else:
            parser.add_argument(f"--{nargs_arg}", nargs="+", required=True, help=text)
    parser.add_function_arguments(func, skip={nargs_arg} if nargs_arg else None)
    return parser


def run_tool(name: str, args: list[str]) -> None:
    """Parses ``args`` for the tool ``name`` and calls it."""
    if name == "inspect":
        from mlm_lightning.cli.inspect import inspect_command

        inspect_command(args)
        return
    if name == "shard":
        from mlm_lightning.cli.shard import shard_command

        shard_command(args)
        return
    if name == "evaluate":
        from mlm_lightning.cli.evaluate import evaluate_command

        evaluate_command(args)
        return
    if name == "probe":
        from mlm_lightning.cli.probe import probe_command

        probe_command(args)
        return
    module, attr, nargs_arg, positional = TOOLS[name]
    func = getattr(importlib.import_module(module), attr)
    parser = _tool_parser(name, func, nargs_arg, positional)
    func(**parser.parse_args(args).as_dict())


def _user_error(err: BaseException | None) -> MLMError | None:
    """The MLMError behind ``err``, also when a library re-raised it wrapped in another exception."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MLMError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; user errors become one readable line and exit status 2 (143 after ``SIGTERM``).

    Set ``MLM_LIGHTNING_DEBUG=1`` to get the full traceback instead.
    """
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        print(USAGE)  # without building LightningCLI's parser: instant
        return 0
    from mlm_lightning.quiet import quiet_libraries

    try:
        with quiet_libraries():  # known library messages a user cannot act on, for this command only
            if argv and (argv[0] in TOOLS or argv[0] in ("inspect", "evaluate", "probe", "shard")):
                run_tool(argv[0], argv[1:])
            else:
                from mlm_lightning.cli.lightning_cli import run_cli

                run_cli(None if from_command_line else argv)  # None: LightningCLI reads sys.argv itself
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None or os.environ.get("MLM_LIGHTNING_DEBUG"):
            raise
        print(f"error: {' '.join(str(user_error).split())}", file=sys.stderr)
        return user_error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
