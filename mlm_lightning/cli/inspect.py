"""``python -m mlm_lightning inspect``: the corpus report of a ``fit`` configuration, without training."""

from __future__ import annotations

import sys

from mlm_lightning.cli.config import parse_config
from mlm_lightning.data import MLMDataModule
from mlm_lightning.tools.report import corpus_report, format_report, model_max_positions, report_warnings


def inspect_command(args: list[str]) -> int:
    """``inspect``: the corpus report for a training configuration, without training.

    Takes the same arguments as ``fit`` (``--config`` files and ``--data.*`` overrides).
    """
    config = parse_config(args)
    dm = MLMDataModule(**config.data.as_dict())
    stats = corpus_report(dm)
    print(format_report(stats, dm))
    limits = config.corpus_report
    model = {**config.model.as_dict(), "pad_token_id": dm.pad_token_id}  # linked from the tokenizer, as in fit
    found = report_warnings(stats, dm, model_max_positions(model), limits.max_unk_rate, limits.max_document_share)
    for warning in found:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
