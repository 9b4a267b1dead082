"""What ``validate``/``test`` and ``--print_config`` print: the results table and the resolved configuration."""

from __future__ import annotations

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser

# Model settings that only describe a new (from-scratch) model: a pretrained one has its own.
NEW_MODEL_ONLY = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "dropout",
    "embedding_size",
    "config_overrides",
)


def resolved_config_text(parser: LightningArgumentParser, config: Namespace, skip_null: bool = False) -> str:
    """The configuration as YAML, as the run resolves it; a pretrained model's unused settings marked."""
    config = config.clone()
    for key in ("config", "__path__", "print_config"):
        config.pop(key, None)
    text = parser.dump(config, skip_none=skip_null, skip_validation=True)
    if not config.model.get("model_name_or_path"):
        return text.rstrip("\n")
    lines, section = [], None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line.split(":", 1)[0]
        key = line.strip().split(":", 1)[0]
        if section == "model" and line.startswith("  ") and not line.startswith("   ") and key in NEW_MODEL_ONLY:
            line += "  # not used: the pretrained model (model.model_name_or_path) has its own"
        lines.append(line)
    return "\n".join(lines)


def results_table(trainer: Trainer, prefixes: list[str], step: str) -> str:
    """``validate``/``test``'s table: one row per set (loss, perplexity, accuracy), as ``evaluate`` prints it."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    lines = [f"checkpoint step: {step}", "", "| set | loss | perplexity | accuracy |", "| --- | ---: | ---: | ---: |"]
    for prefix in prefixes:
        if f"{prefix}/loss" not in metrics:
            continue
        name = prefix.partition("/")[2] or ("validation" if prefix == "val" else prefix)
        figures = [metrics.get(f"{prefix}/{key}", float("nan")) for key in ("loss", "perplexity", "accuracy")]
        lines.append(f"| {name} | {figures[0]:.4f} | {figures[1]:.2f} | {figures[2]:.2%} |")
    return "\n".join(lines)


def evaluated_step(checkpoint: str | None, ckpt_path: str | None) -> str:
    """The optimizer step of the evaluated checkpoint (``checkpoint``: the file read for its settings), in words."""
    if checkpoint is None:
        return "the configured model (no --ckpt_path)" if not ckpt_path else "?"
    try:  # mmap: only the small record is read
        step = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step", "?")
    except Exception:  # it was read a moment ago; the table matters more than the step in it
        step = "?"
    return f"{step} ({checkpoint})"
