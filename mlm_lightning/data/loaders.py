"""Dataloaders over a split's rows: the sampler's order, the collator, the workers, and the training position that
checkpoints keep (read from the trainer's progress, so a resume continues mid-epoch)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from mlm_lightning.data.collator import MLMCollator
from mlm_lightning.data.rows import TokenRows
from mlm_lightning.data.sampling import MLMSampler, ResumableDataLoader
from mlm_lightning.data.streaming import StreamingDataLoader, StreamingRows
from mlm_lightning.errors import MLMError


def _batches_done(trainer: Any) -> int:
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def stream_loader(rows: StreamingRows, batch_size: int, collator: MLMCollator, trainer: Any) -> StreamingDataLoader:
    """The loader of streamed training rows (``data.streaming``)."""
    # Read in this process: the position a checkpoint keeps is the stream's here (num_workers: unused).
    stream = StreamingDataLoader(rows, batch_size=batch_size, collate_fn=collator, pin_memory=torch.cuda.is_available())
    if trainer is not None:
        stream.progress = lambda: _batches_done(trainer)
        stream.current_epoch = lambda: trainer.current_epoch
    return stream


def rows_loader(
    rows: TokenRows,
    split: str,
    batch_size: int,
    collator: MLMCollator,
    seed: int,
    num_workers: int,
    trainer: Any,
    lengths: Any = None,
    keep_position: bool = True,
) -> DataLoader:
    """The loader of a cached split: ``train`` (shuffled, resumable, in workers) or an evaluation split.

    Args:
        lengths: Row lengths for bucketing (``line_by_line`` rows differ in length; packed rows are all full).
        keep_position: ``False`` after a resume on other data: the checkpoint's position means nothing in them.
    """
    train = split == "train"
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    if not train and len(rows) < world:  # a device with no batch would skip the metric sync the others wait in
        raise MLMError(
            f"the {split} split has {len(rows)} rows for {world} devices: every device needs at least one. "
            f"Use more {split} data, fewer devices or a smaller data.max_seq_length."
        )
    sampler = MLMSampler(
        len(rows),
        seed,
        shuffle=train,
        rank=rank,
        world_size=world,
        pad=train,
        batch_size=batch_size,
        lengths=lengths,
    )
    loader = (ResumableDataLoader if train else DataLoader)(
        rows,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        # Evaluation collates in this process: a worker forked from the trainer mid-run (Lightning keeps it
        # until the next validation) ends up holding a private copy of every page the trainer rewrites.
        num_workers=num_workers if train else 0,
        persistent_workers=train and num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    if train and trainer is not None:
        loader.progress = lambda: _batches_done(trainer)
    if train and not keep_position:
        loader.keep_position = False
    return loader
