"""The order of rows: :class:`MLMSampler` (shuffled, sharded, bucketed, resumable) and :class:`ResumableDataLoader`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler


class MLMSampler(Sampler[tuple[int, int, int]]):
    """Order of rows for one device: shuffled by ``seed + epoch``, sharded across devices, optionally bucketed.

    Yields ``(epoch, index)`` so the collator draws that epoch's masks. It shards by itself, so the Trainer must
    leave it in place: ``Trainer(use_distributed_sampler=False)`` (the command line sets it). Lightning calls
    :meth:`set_epoch` at the start of every epoch on any sampler that has it, distributed or not.

    Args:
        num_rows: Rows in the dataset.
        seed: Shuffling seed (combined with the epoch).
        shuffle: Shuffle (training) or keep the dataset order (evaluation).
        rank: This device's rank.
        world_size: Number of devices.
        pad: Repeat a few rows so every device gets the same count (training needs equal step counts under
            DDP); evaluation shards without padding so no row is counted twice.
        batch_size: Rows per batch, for bucketing and for resuming mid-epoch.
        lengths: Row lengths; when given, rows of similar length are batched together (less padding).
        bucket_batches: How many batches form one sorting window when bucketing.
    """

    def __init__(
        self,
        num_rows: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        batch_size: int = 1,
        lengths: np.ndarray | None = None,
        bucket_batches: int = 50,
    ) -> None:
        self.num_rows = num_rows
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.num_replicas = world_size
        self.epoch = 0
        self.pad = pad
        self.batch_size = batch_size
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self._resume: tuple[int, int] | None = None  # (epoch, batches already consumed in it)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order (and masks) the next pass serves; Lightning calls it before every epoch."""
        self.epoch = epoch

    def shard(self, epoch: int) -> np.ndarray:
        """This device's rows for ``epoch``, in the order they are served (before any resume skip)."""
        n, world = self.num_rows, self.num_replicas
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.pad and world > 1 and n % world:
            order = np.concatenate([order, order[: world - n % world]])
        mine = order[self.rank :: world]
        if self.lengths is not None and len(mine):
            mine = self._bucket(mine, epoch)
        return mine

    def _bucket(self, rows: np.ndarray, epoch: int) -> np.ndarray:
        assert self.lengths is not None  # called only with lengths
        lengths = self.lengths[rows]
        if not self.shuffle:
            return rows[np.argsort(-lengths, kind="stable")]
        # Sort within windows of many batches, then shuffle whole batches: little padding, still random.
        window = self.batch_size * self.bucket_batches
        parts = [
            rows[i : i + window][np.argsort(-lengths[i : i + window], kind="stable")]
            for i in range(0, len(rows), window)
        ]
        ordered = np.concatenate(parts)
        batches = [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        perm = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
        return np.concatenate([batches[i] for i in perm])

    def resume(self, epoch: int, consumed_batches: int) -> None:
        """Makes the next pass over ``epoch`` skip the batches a checkpointed run had already trained on."""
        self._resume = (epoch, consumed_batches)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """``(epoch, row, batch)``: ``batch`` counts this device's training batches before the row's (all epochs).

        The batch number lets a masking schedule be a function of training progress, the same after a resume.
        """
        epoch = self.epoch
        rows = self.shard(epoch)
        first = epoch * -(-len(rows) // self.batch_size)
        skip = 0
        if self._resume is not None:
            resume_epoch, consumed = self._resume
            self._resume = None
            if resume_epoch == epoch:
                skip = consumed * self.batch_size
        # lazily: a list would cost ~100 bytes per row
        return ((epoch, int(i), first + (skip + k) // self.batch_size) for k, i in enumerate(rows[skip:]))

    def __len__(self) -> int:
        n, world = self.num_rows, self.num_replicas
        if self.pad:
            return math.ceil(n / world)
        return len(range(self.rank, n, world))


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position within the epoch goes into checkpoints, so a resumed run continues exactly.

    Lightning saves ``state_dict()`` with every checkpoint and calls ``load_state_dict()`` before the first
    batch of a resumed run. The position is the number of batches the *training loop* has consumed
    (``progress``), not the number the loader has produced: workers and Lightning's fetcher read ahead.
    """

    sampler: MLMSampler  # the only sampler it is given
    progress: Callable[[], int] | None = None
    keep_position = True  # False: a resume on other data (data.resume_with_changed_data) starts them at their top

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "consumed_batches": int(self.progress() if self.progress else 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self.keep_position:
            self.sampler.resume(int(state["epoch"]), int(state["consumed_batches"]))
