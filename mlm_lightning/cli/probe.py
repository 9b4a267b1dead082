"""``python -m mlm_lightning probe``: the command line of :mod:`mlm_lightning.tools.probe` (flags, table, output)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, NoReturn

from mlm_lightning.errors import MLMError
from mlm_lightning.tools.probe import ProbeSettings, load_encoder, run_probe, trainer_settings_of
from mlm_lightning.tools.probe_table import format_table, write_output


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad or missing flag as one :class:`MLMError` line instead of usage and exit."""

    def error(self, message: str) -> NoReturn:
        raise MLMError(f"probe: {message} (every option: python -m mlm_lightning probe --help)")


def _flag_type(f: Any) -> Any:
    default = ProbeSettings.__dataclass_fields__[f.name].default
    if f.name == "seeds":
        return int
    if isinstance(default, bool):
        return lambda v: v.lower() in ("1", "true", "yes")
    return type(default) if isinstance(default, (int, float)) else str


def probe_command(args: list[str]) -> int:
    """``probe --models M [M ...] [--task FILE] [--output FILE] [probe flags] [fit arguments]``."""
    doc = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in _attribute_lines()}
    parser = _Parser(
        prog="python -m mlm_lightning probe",
        description="Trains and tests a classifier on a labelled task with each model's encoder (the same splits, "
        "seeds and settings for all): accuracy and macro-F1, mean ± std, and each model's paired difference from "
        "the first with a 95% interval. Fit arguments (--config, --trainer.precision ...) give the precision, "
        "the accelerator and the probe section's settings.",
    )
    parser.add_argument("--models", nargs="+", required=True,
                        help="Models: export or model folders, fit checkpoints (.ckpt), pkg:// paths or hub names; "
                        "the first is the reference of the differences.")  # fmt: skip
    parser.add_argument("--output", default=None, help="Also write the table to this .json or .csv file.")
    parser.add_argument("--tokenizer", default=None, help="Read every model with this tokenizer (it must be theirs).")
    for f in fields(ProbeSettings):
        kwargs: dict[str, Any] = {"default": None, "help": doc.get(f.name, "").replace("``", "").replace("%", "%%")}
        if f.name == "seeds":
            kwargs["nargs"] = "+"
        if f.name == "mode":
            kwargs["choices"] = ["linear", "fine-tune"]
        parser.add_argument(f"--{f.name}", type=_flag_type(f), **kwargs)
    known, rest = parser.parse_known_args(args)
    from mlm_lightning.tools.evaluate import check_output

    output = check_output(known.output)
    config = None
    if rest:
        from mlm_lightning.cli.config import parse_config

        config = parse_config(rest)
    base = ProbeSettings()
    section = config.get("probe") if config is not None else None
    values = {}
    for f in fields(ProbeSettings):
        given = getattr(known, f.name)
        if given is None and section is not None and section.get(f.name) is not None:
            given = section.get(f.name)
        values[f.name] = getattr(base, f.name) if given is None else given
    settings = ProbeSettings(**values)
    task, splits = settings.load()  # bad input stops here, before a model is loaded
    loaders = [(name, lambda name=name: load_encoder(name, known.tokenizer)) for name in known.models]
    rows = run_probe(loaders, settings, trainer_settings_of(config), task, splits)
    print(format_table(rows, task.name))
    if output is not None:
        write_output(rows, output)
        print(f"written to {output}")
    return 0


def _attribute_lines() -> list[str]:
    """``name: text`` for each attribute in :class:`ProbeSettings`' docstring (the flags' help)."""
    from docstring_parser import parse as parse_docstring

    return [
        f"{p.arg_name}: {' '.join((p.description or '').split())}"
        for p in parse_docstring(ProbeSettings.__doc__ or "").params
    ]
