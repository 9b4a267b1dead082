"""Each setting is checked once, by its type while the command line parses; what it builds trusts it."""

from __future__ import annotations

import math

import torch

from mlm_lightning.cli.lightning_cli import run_cli
from mlm_lightning.data.masking import IGNORE_INDEX


def test_masking_every_token_trains_from_the_command_line(tiny_args: list[str]) -> None:
    # mlm_probability is (0, 1] at its type; the collator refused 1 with a bare ValueError at the first batch.
    args = ["--data.masking.mlm_probability", "1.0", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
    cli = run_cli(["fit", *tiny_args, *args])
    assert cli.trainer.global_step == 2 and math.isfinite(float(cli.trainer.callback_metrics["val/loss"]))
    batch = next(iter(cli.datamodule.train_dataloader()))
    labels, ids = batch["labels"], batch["input_ids"]
    original = torch.where(labels == IGNORE_INDEX, ids, labels)
    special = torch.tensor(sorted(cli.datamodule.tokenizer.all_special_ids))
    # Every token but the special ones is a target (and still replaced 80/10/10: most by [MASK]).
    assert torch.equal(labels == IGNORE_INDEX, torch.isin(original, special))
    chosen = labels != IGNORE_INDEX
    assert (ids[chosen] == cli.datamodule.tokenizer.mask_token_id).float().mean() > 0.6
