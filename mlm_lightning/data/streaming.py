"""Training rows streamed from shard sets (:mod:`.shards`) in folders or object stores, mixed by weight, resumable.

The library does the streaming: each shard set is a ``datasets.IterableDataset`` (``from_generator`` over the list
of its shards), dealt to the devices by ``datasets.distributed.split_dataset_by_node`` (whole shards, each to one
device per epoch), sets mixed by ``datasets.interleave_datasets`` with their weights as probabilities, and the
position taken from ``IterableDataset.state_dict()``. What is ours: reading one shard (fetched whole with retries,
its size and digest checked against the manifest, the next one fetched in the background) and the order of rows
in it, seeded by ``(seed, epoch, shard)``: ``datasets``' shuffle buffer would be lost on resume, this order is not.

Under DDP every device must take the same number of steps, so an epoch is the rows the device with the fewest
holds (rounded down to whole batches); the others leave the rest of their shards for that epoch.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from mlm_lightning.data.shards import blake2b, filesystem, iter_shard, join, store_call
from mlm_lightning.errors import MLMError

SNAPSHOTS = 64  # positions kept at batch boundaries: more than Lightning's fetcher reads ahead
PREFETCH_PER_SET = 2  # shards held in memory per set: the one being read and the next one


@dataclass
class ShardSet:
    """One streamed source of training rows.

    Args:
        url: The folder or object-store URL (``s3://bucket/prefix``, ``gs://...``) of a shard set that
            ``python -m mlm_lightning shard`` wrote.
        weight: The set's share of the training rows, relative to the other sets' weights (``0.7`` and ``0.3``:
            70 % and 30 % of every epoch's rows).
    """

    url: str
    weight: float = 1.0


def check_shards(url: str, manifest: dict[str, Any], retries: int) -> None:
    """Every shard the manifest lists is in the set's folder with its size (one listing); else one line naming it."""
    fs, path = filesystem(url)
    listing = store_call(url, "listing", lambda: fs.ls(path, detail=True), retries)
    sizes = {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry.get("size") for entry in listing}
    for shard in manifest["shards"]:
        name = shard["name"]
        if name not in sizes:
            raise MLMError(
                f"the shard {join(url, name)} is missing (listed in its manifest): write the shard set again"
            )
        if sizes[name] != shard["bytes"]:
            raise MLMError(
                f"the shard {join(url, name)} is corrupt ({sizes[name]:,} bytes, the manifest says "
                f"{shard['bytes']:,}): write the shard set again"
            )


def checked_manifests(
    sets: list[ShardSet], tokenizer: Any, tokenizer_name: str | None, layout: str, max_seq_length: int, retries: int
) -> list[tuple[str, float, dict[str, Any]]]:
    """``(url, weight, manifest)`` of every shard set, each checked against the run's tokenizer and rows."""
    from mlm_lightning.data.cache import tokenizer_fingerprint
    from mlm_lightning.data.shards import read_manifest

    fingerprint = tokenizer_fingerprint(tokenizer)
    found = []
    for s in sets:
        manifest = read_manifest(s.url, retries)
        if manifest["tokenizer"]["fingerprint"] != fingerprint:
            raise MLMError(
                f"{s.url} was tokenized with {manifest['tokenizer']['name']} (fingerprint "
                f"{manifest['tokenizer']['fingerprint']}), not this run's tokenizer {tokenizer_name} "
                f"({fingerprint}): set data.tokenizer to the shards', or shard the text with this one"
            )
        if (manifest["layout"], manifest["max_seq_length"]) != (layout, max_seq_length):
            raise MLMError(
                f"{s.url} holds {manifest['layout']} rows of {manifest['max_seq_length']} tokens, this run "
                f"wants {layout} rows of {max_seq_length}: set data.layout and "
                f"data.max_seq_length to the shards', or shard the text again"
            )
        check_shards(s.url, manifest, retries)
        found.append((s.url, s.weight, manifest))
    return found


def fetch_shard(shard: dict[str, Any], retries: int, wait: float) -> bytes:
    """A shard's bytes, fetched whole (with ``retries``) and checked against the manifest's size and digest."""
    url = shard["url"]
    fs, path = filesystem(url)
    try:
        data = store_call(url, "reading the shard", lambda: fs.cat_file(path), retries, wait)
    except FileNotFoundError:
        raise MLMError(
            f"the shard {url} is missing (listed in {shard['manifest']}): write the shard set again"
        ) from None
    if len(data) != shard["bytes"] or blake2b(data) != shard["blake2b"]:
        raise MLMError(
            f"the shard {url} is corrupt ({len(data):,} bytes, digest {blake2b(data)}; the manifest says "
            f"{shard['bytes']:,} bytes, {shard['blake2b']}): write the shard set again"
        )
    return data


class _Prefetch:
    """The next shards of this process, fetched in the background: at most ``PREFETCH_PER_SET`` per set in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: OrderedDict[tuple[str, str], Future[bytes]] = OrderedDict()

    def get(self, shard: dict[str, Any], ahead: dict[str, Any] | None, retries: int, wait: float, limit: int) -> bytes:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlm-shard-prefetch")
            future = self._futures.pop((shard["url"], shard["blake2b"]), None)
            if ahead is not None and (ahead["url"], ahead["blake2b"]) not in self._futures:
                self._futures[(ahead["url"], ahead["blake2b"])] = self._pool.submit(fetch_shard, ahead, retries, wait)
                while len(self._futures) > limit:  # one not read (another order, a resume): dropped
                    self._futures.popitem(last=False)[1].cancel()
        return future.result() if future is not None else fetch_shard(shard, retries, wait)


_PREFETCH = _Prefetch()


def shard_rows(shards: list[dict[str, Any]], seed: int, epoch: int, retries: int, wait: float, sets: int) -> Iterator:
    """The rows of ``shards`` (``datasets`` hands one at a time), each shard's in an order seeded by the epoch."""
    import pyarrow.parquet as pq

    for shard in shards:
        data = _PREFETCH.get(shard, shard.get("ahead"), retries, wait, PREFETCH_PER_SET * sets)
        table = pq.read_table(io.BytesIO(data))
        order = np.random.default_rng([seed, epoch, shard["set"], shard["number"]]).permutation(table.num_rows)
        for ids, index in iter_shard(table, order):
            yield {"input_ids": ids, "index": index, "source": shard["set"]}


def _rows_of(shards: list[dict[str, Any]], rank: int, world: int) -> int:
    """Rows that ``split_dataset_by_node`` deals to ``rank``: asked of the library with a stream of row counts."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    def counts(shards: list[dict[str, Any]]) -> Iterator[dict[str, int]]:
        for shard in shards:
            yield {"rows": shard["rows"]}

    ds = datasets.IterableDataset.from_generator(counts, gen_kwargs={"shards": shards})
    return sum(ex["rows"] for ex in split_dataset_by_node(ds, rank, world, strategy="shards"))


class StreamingRows(IterableDataset):
    """The training rows of one device, streamed from weighted shard sets (see the module docstring).

    Items are dicts ``{"input_ids", "index", "epoch"}`` like :class:`~mlm_lightning.data.rows.TokenRows`'s, so the
    masking collator is the same, and ``source`` (the set's place in ``sets``). Iterated in the training process
    (the position it records lives there).

    Args:
        sets: ``(url, weight, manifest)`` of each shard set (manifests checked by the caller).
        seed: Seed of the order of shards and rows, and of the mixing.
        rank: This device's rank.
        world_size: Number of devices.
        batch_size: Rows per batch: an epoch is whole batches, and positions are kept at batch boundaries.
        retries: Tries after the first for every request to a store.
        wait: Seconds before the first retry (doubled for each next one).
    """

    def __init__(
        self,
        sets: list[tuple[str, float, dict[str, Any]]],
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
        retries: int = 3,
        wait: float = 1.0,
    ) -> None:
        self.sets = sets
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.retries = retries
        self.wait = wait
        self.epoch = 0
        self._resume: dict[str, Any] | None = None
        self.snapshots: OrderedDict[int, dict[str, Any]] = OrderedDict()  # rows served -> stream position
        for url, _, manifest in sets:
            if len(manifest["shards"]) < world_size:
                raise MLMError(
                    f"{url} has {len(manifest['shards'])} shards for {world_size} devices: every device needs one. "
                    f"Write it again with a smaller --rows_per_shard"
                )
        # The dealing is the same every epoch (only the order within a device's shards changes): fixed epoch length.
        per_rank = [
            sum(_rows_of(self._shards(i, 0), r, world_size) for i in range(len(sets))) for r in range(world_size)
        ]
        self.rows_per_rank = per_rank
        self.rows_per_epoch = min(per_rank) // batch_size * batch_size

    def _shards(self, set_index: int, epoch: int) -> list[dict[str, Any]]:
        """The shard list of a set for ``epoch``: each device's shards (every ``world``-th) in a seeded order."""
        url, _, manifest = self.sets[set_index]
        shards = [
            {
                "url": join(url, s["name"]),
                "manifest": join(url, "manifest.json"),
                "rows": int(s["rows"]),
                "bytes": int(s["bytes"]),
                "blake2b": s["blake2b"],
                "set": set_index,
                "number": number,
            }
            for number, s in enumerate(manifest["shards"])
        ]
        world = self.world_size
        order = np.arange(len(shards))
        rng = np.random.default_rng([self.seed, epoch, set_index])
        for r in range(world):  # shuffled within the positions dealt to one device (split_dataset_by_node: r::world)
            order[r::world] = rng.permutation(order[r::world])
        shards = [shards[i] for i in order]
        for i, shard in enumerate(shards):  # the next shard this device reads: fetched in the background
            shard["ahead"] = (
                {k: v for k, v in shards[i + world].items() if k != "ahead"} if i + world < len(shards) else None
            )
        return shards

    def stream(self, epoch: int) -> Any:
        """The ``datasets.IterableDataset`` of this device's rows for ``epoch``: dealt, then mixed by weight."""
        import datasets
        from datasets.distributed import split_dataset_by_node

        parts = []
        for i in range(len(self.sets)):
            kwargs = {"shards": self._shards(i, epoch), "seed": self.seed, "epoch": epoch}
            kwargs |= {"retries": self.retries, "wait": self.wait, "sets": len(self.sets)}
            ds = datasets.IterableDataset.from_generator(shard_rows, gen_kwargs=kwargs)
            parts.append(split_dataset_by_node(ds, self.rank, self.world_size, strategy="shards"))
        if len(parts) == 1:
            return parts[0]
        weights = np.array([w for _, w, _ in self.sets], dtype=np.float64)
        return datasets.interleave_datasets(
            parts,
            probabilities=list(weights / weights.sum()),
            seed=self.seed + epoch,
            stopping_strategy="all_exhausted",  # a set that runs out starts over: every epoch keeps the weights
        )

    def __len__(self) -> int:
        return self.rows_per_epoch

    def resume(self, state: dict[str, Any]) -> None:
        """Makes the next pass continue from a checkpointed position (see :meth:`position`)."""
        self._resume = state

    def position(self, rows: int) -> dict[str, Any] | None:
        """The stream's state after ``rows`` rows of the current epoch (a batch boundary), as a checkpoint keeps it."""
        if rows == 0:
            return {"epoch": self.epoch, "rows": 0, "stream": None}
        if rows in self.snapshots:
            return {"epoch": self.epoch, "rows": rows, "stream": self.snapshots[rows]}
        pending = self._resume  # restored, not yet iterated: the position is the restored one
        if pending is not None and pending["epoch"] == self.epoch and pending["rows"] == rows:
            return {key: pending[key] for key in ("epoch", "rows", "stream")}
        return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, served = self.epoch, 0
        stream = self.stream(epoch)
        state, self._resume = self._resume, None
        if state is not None and state["epoch"] == epoch and state["rows"]:
            stream.load_state_dict(state["stream"])
            served = int(state["rows"])
        self.snapshots.clear()
        if served:
            assert state is not None  # served counts the restored state's rows
            self.snapshots[served] = state["stream"]
        if served >= self.rows_per_epoch:
            return
        for example in stream:
            served += 1
            if served % self.batch_size == 0:
                self.snapshots[served] = stream.state_dict()
                while len(self.snapshots) > SNAPSHOTS:
                    self.snapshots.popitem(last=False)
            ids = np.asarray(example["input_ids"], dtype=np.int64)  # interleaving hands lists
            yield {"input_ids": ids, "index": example["index"], "epoch": epoch, "source": example["source"]}
            if served == self.rows_per_epoch:
                return
        raise RuntimeError(f"the stream of rank {self.rank} ended after {served} of {self.rows_per_epoch} rows")


class StreamingDataLoader(DataLoader):
    """The training loader of streamed rows; its position goes into checkpoints, so a resumed run continues exactly.

    Like :class:`~mlm_lightning.data.sampling.ResumableDataLoader`, the position is what the *training loop* has
    consumed (``progress``), not what the loader has produced; the stream's state at that batch boundary is the one
    :class:`StreamingRows` recorded when it served it.
    """

    dataset: StreamingRows  # the only dataset it is given
    progress: Callable[[], int] | None = None
    current_epoch: Callable[[], int] | None = None

    def __iter__(self) -> Any:
        if self.current_epoch is not None:
            self.dataset.epoch = self.current_epoch()
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The position of every device's stream: Lightning saves the checkpoint of rank 0, whose position alone
        would not tell another device where its own shards stood (every rank builds its checkpoint together)."""
        consumed = int(self.progress() if self.progress else 0)
        position = self.dataset.position(consumed * self.dataset.batch_size)
        if position is None:
            raise RuntimeError(f"no stream position recorded after {consumed} batches")
        streams = [position["stream"]]
        if self.dataset.world_size > 1 and dist.is_available() and dist.is_initialized():
            streams = [None] * dist.get_world_size()
            dist.all_gather_object(streams, position["stream"])
        return {"epoch": position["epoch"], "rows": position["rows"], "consumed_batches": consumed, "streams": streams}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows = self.dataset
        streams = state["streams"]
        if len(streams) != rows.world_size:
            rank_zero_warn(
                f"the checkpoint's stream positions are of {len(streams)} devices, this run has {rows.world_size}: "
                f"the shards are dealt differently, so epoch {state['epoch']} is read again from its start"
            )
            return
        rows.resume({"epoch": state["epoch"], "rows": state["rows"], "stream": streams[rows.rank]})
