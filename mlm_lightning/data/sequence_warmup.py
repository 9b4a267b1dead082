"""Sequence-length warm-up: the setting ``data.sequence_warmup``, and the row length it gives a training batch.

Training starts on short rows and lengthens them to ``data.max_seq_length`` (cramming, MosaicML's
``SeqLengthWarmup``): early steps, when the model learns mostly local statistics, pay for short attention only.
Each training row is masked whole, then cut into pieces of the batch's length (the "reshape" form of Composer's
algorithm): a batch keeps its rows' tokens and masks, and the run its data order, so a run with warm-up sees
exactly the tokens and targets of one without, only in shorter rows. Validation and test always see full rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlm_lightning.errors import MLMError
from mlm_lightning.settings import NonNegativeInt, SequenceLength

STEP = 8  # row lengths in multiples of 8: tensor-core and vector-friendly shapes, few distinct shapes


@dataclass(frozen=True)
class SequenceWarmup:
    """Sequence-length warm-up, off unless ``start_length`` is set.

    Args:
        start_length: Tokens per row in the first training batch (at least 8); the length then grows linearly,
            in multiples of 8, to ``data.max_seq_length`` over ``steps`` training batches (per device).
            ``None``: every batch has full rows.
        steps: Training batches over which rows grow to full length (required with ``start_length``).
    """

    start_length: SequenceLength | None = None
    steps: NonNegativeInt = 0

    def __post_init__(self) -> None:
        if self.start_length is not None and not self.steps:
            raise MLMError(
                "data.sequence_warmup.start_length needs data.sequence_warmup.steps (the batches over which rows "
                "grow to data.max_seq_length)"
            )

    @classmethod
    def checked(cls, value: SequenceWarmup | dict[str, Any], max_seq_length: int) -> SequenceWarmup:
        """The setting (a record, or its plain form from a checkpoint), refused where it would shorten nothing."""
        warmup = value if isinstance(value, SequenceWarmup) else cls(**value)
        if warmup.start_length is not None and warmup.start_length >= max_seq_length:
            raise MLMError(
                f"data.sequence_warmup.start_length ({warmup.start_length}) must be below data.max_seq_length "
                f"({max_seq_length}): rows cannot start longer than they end"
            )
        return warmup


def warmup_length(start: int, batches: int, full: int, batch: int) -> int:
    """Tokens per row in training batch ``batch``: ``start`` at batch 0, growing linearly to ``full`` at ``batches``."""
    if batch >= batches:
        return full
    grown = start + (full - start) * batch / batches
    return min(full, max(start, int(grown) // STEP * STEP))
