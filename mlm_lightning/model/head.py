"""The MLM head on the masked positions only, the training loss, and the fixed widths of compiled batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlm_lightning import families
from mlm_lightning.data.collator import IGNORE_INDEX
from mlm_lightning.training.flops import EncoderShape, batch_token_counts, training_flops

# On a CPU the MLM head runs on a multiple of this many rows (masked_logits).
HEAD_ROWS_MULTIPLE = 64

# line_by_line batches under `compile` are padded to one of this many widths (multiples of max_seq_length / this).
COMPILE_WIDTHS = 4

Head = Callable[[torch.Tensor], torch.Tensor]


def position_wise_head(model: nn.Module, full_logits: bool) -> tuple[Head | None, str | None]:
    """The function mapping ``model``'s hidden states to vocabulary logits, if its family's head is position-wise.

    ``(None, None)`` when ``full_logits`` is asked for; ``(None, why)`` when the family's head needs every position.
    Looked up on every call (a dict lookup), so copies of a module never use a stale model's head.
    """
    if full_logits:
        return None, None
    head = families.masked_head(model)
    if isinstance(head, str):
        return None, head
    return head, None


def masked_logits(model: nn.Module, batch: Mapping[str, Any], head: Head | None, runs: nn.Module) -> torch.Tensor:
    """Vocabulary logits at ``batch``'s masked positions only, shape (masked tokens, vocab).

    ``runs`` is what runs the inputs (compiled or not): ``model``'s encoder, whose hidden states at the masked
    positions go through ``head``; or, where ``head`` is ``None``, the whole model, whose logits are gathered.
    """
    inputs = families.encoder_inputs(model, batch["input_ids"], batch.get("attention_mask"))
    positions = batch["masked_positions"]
    if head is None:
        logits = runs(**inputs).logits
        return logits.flatten(0, 1).index_select(0, positions)
    hidden = runs(**inputs)[0].flatten(0, 1)
    # Most of a small model's work is the vocabulary projection: apply it to the masked positions only.
    count = positions.numel()
    if hidden.device.type == "cpu" and count % HEAD_ROWS_MULTIPLE:
        # PyTorch's CPU matrix products (oneDNN, bf16) cache a kernel per shape, up to 1,024 of them: with the
        # masked count changing every batch, the process grew and built a kernel a step. Padded rows (copies of
        # row 0) give a few shapes; cut off at once.
        positions = F.pad(positions, (0, HEAD_ROWS_MULTIPLE - count % HEAD_ROWS_MULTIPLE))
        return head(hidden.index_select(0, positions))[:count]
    return head(hidden.index_select(0, positions))


def masked_mean_loss(module: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    """Mean cross-entropy of ``module.masked_logits`` at ``batch``'s masked positions; labels ``-100`` are ignored.

    A sum over the counted labels rather than ``reduction="mean"``, so a batch without masked tokens gives a loss
    of 0 (with gradients) instead of NaN, and padding slots labelled ``-100`` change neither loss nor gradients.
    """
    labels = batch["masked_labels"]
    logits = module.masked_logits(batch).float()
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def step_flops(module: Any, batch: dict[str, Any], shape: EncoderShape | None = None) -> int:
    """Model FLOPs of one training step (forward and backward) of ``module`` on ``batch``, at the rows' real lengths.

    ``shape``: the model's :class:`EncoderShape`, where the caller keeps it (else read from its config).
    """
    shape = shape or EncoderShape.from_config(module.model.config)
    tokens, pairs = batch_token_counts(batch)
    # The head runs on the masked positions only, unless full logits are computed (then at every token).
    head_positions = batch["masked_positions"].numel() if module.mlm_head() is not None else tokens
    return training_flops(shape, tokens, pairs, head_positions)


def compile_width(batch: dict[str, Any], longest: int | None, pad_token_id: int) -> dict[str, Any]:
    """``batch`` padded to one of a few fixed widths (:func:`pad_to_compile_width`); as it is without ``longest``.

    Compiled code is specialised to its input shapes (``dynamic=False``): line_by_line batches, as wide as their
    longest row, would compile again for every new width (and past torch's recompile limit silently run
    uncompiled). The step methods call it (Lightning's batch-transfer hooks would warn on every run that the data
    module has them too).
    """
    if not longest:
        return batch
    return pad_to_compile_width(batch, int(longest), pad_token_id)


def pad_to_compile_width(batch: dict[str, Any], longest: int, pad_token_id: int) -> dict[str, Any]:
    """``batch`` padded to the next multiple of ``longest / COMPILE_WIDTHS`` (rounded up to 8), with a mask.

    Every batch narrower than ``longest`` gets an attention mask (all ones if its rows are equally long), so each
    width is one input signature; full-width batches without padding (packed rows) keep running without one.
    Masked positions (indices into the flattened batch) are moved to the new row width; labels and counts stay.
    """
    ids = batch["input_ids"]
    rows, width = ids.shape
    step = math.ceil(longest / COMPILE_WIDTHS)
    if step >= 8:
        step = math.ceil(step / 8) * 8  # multiples of 8 suit matrix units
    target = min(max(longest, width), math.ceil(width / step) * step)
    if target == width and (width >= longest or "attention_mask" in batch):
        return batch
    extra = target - width
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    out = dict(batch)
    out["input_ids"] = F.pad(ids, (0, extra), value=pad_token_id)
    out["attention_mask"] = F.pad(mask, (0, extra), value=0)
    if "labels" in batch:
        out["labels"] = F.pad(batch["labels"], (0, extra), value=IGNORE_INDEX)
    positions = batch["masked_positions"]
    out["masked_positions"] = positions // width * target + positions % width
    return out
