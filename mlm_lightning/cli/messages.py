"""The command line's messages: a bad key, flag or value in one line; whole sentences for ``--help``."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import NoReturn

import jsonargparse.typing
from lightning.pytorch.cli import LightningArgumentParser


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
    if found is None or kind is None or not hasattr(kind, "_expression"):
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


def command_name() -> str:
    """The command as the user typed it: ``python -m mlm_lightning`` rather than ``__main__.py``."""
    name = Path(sys.argv[0]).name
    return "python -m mlm_lightning" if name in ("__main__.py", "") else name
