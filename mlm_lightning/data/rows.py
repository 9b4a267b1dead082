"""Rows of token ids over a cached token stream: the two layouts.

The stream holds every document followed by ``[SEP]``; both layouts are views over it, so changing ``layout`` or
``max_seq_length`` never re-tokenizes:

* ``packed``: block *i* is ``[CLS]`` + stream[i*(L-1) : (i+1)*(L-1)]; no padding and no token dropped
  (only the very last block may be shorter).
* ``line_by_line``: one row per document, ``[CLS]`` doc ``[SEP]``; a document longer than the model
  takes is split into consecutive windows rather than truncated.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset


class TokenRows(Dataset):
    """Rows of token ids over a memory-mapped token stream (see the module docstring for the layouts).

    Items are dicts ``{"input_ids", "index", "epoch"}``; a key may be an index or an ``(epoch, index)``
    pair from :class:`MLMSampler`, so the collator can draw that epoch's mask.
    """

    def __init__(self, folder: Path, layout: str, max_seq_length: int, cls_token_id: int, sep_token_id: int) -> None:
        self.folder = folder
        self.layout = layout
        self.max_seq_length = max_seq_length
        self.cls = np.array([cls_token_id], dtype=np.int64)
        self.sep = np.array([sep_token_id], dtype=np.int64)
        self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")  # length and dtype; rows are read by _read
        self._file = open(folder / "tokens.npy", "rb")  # noqa: SIM115 (open for the dataset's lifetime)
        if layout == "packed":
            self._block = max_seq_length - 1
            self._n = math.ceil(len(self.tokens) / self._block)
        else:
            doc_offsets = np.load(folder / "doc_offsets.npy")
            # Windows of at most L-2 content tokens per document (its trailing [SEP] excluded).
            width = max_seq_length - 2
            starts, ends = doc_offsets[:-1], doc_offsets[1:] - 1
            n_windows = np.maximum(1, -(-(ends - starts) // width))
            first = np.repeat(starts, n_windows)
            step = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
            self._starts = first + step * width
            self._ends = np.minimum(self._starts + width, np.repeat(ends, n_windows))
            self._n = len(self._starts)
            self.windowed_documents = int((n_windows > 1).sum())

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        """Closes the token file (rows can no longer be read): for a set read once, e.g. to check it."""
        if self.__dict__.get("_file") is not None:
            self._file.close()

    def __del__(self) -> None:
        # A dropped set closes its file (otherwise Python warns about it when the set is collected).
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (spawned dataloader workers, ddp_spawn) must not copy the whole memory-mapped corpus.
        return {**self.__dict__, "tokens": None, "_file": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tokens = np.load(self.folder / "tokens.npy", mmap_mode="r")
        self._file = open(self.folder / "tokens.npy", "rb")  # noqa: SIM115

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream (``stop`` clipped to its end)."""
        # pread rather than the memory map: each random read through the map made the kernel's read-ahead
        # resident in this process, so a few hundred steps mapped most of a large corpus. Read this way, the
        # file's pages stay in the kernel's page cache, outside the process.
        stop = min(stop, len(self.tokens))
        size = self.tokens.dtype.itemsize
        raw = os.pread(self._file.fileno(), max(0, stop - start) * size, self.tokens.offset + start * size)
        return np.frombuffer(raw, dtype=self.tokens.dtype)

    def row_lengths(self) -> np.ndarray:
        """Length of every row, special tokens included (used for bucketing and statistics)."""
        if self.layout == "packed":
            lengths = np.full(self._n, self.max_seq_length, dtype=np.int64)
            if self._n:
                lengths[-1] = len(self.tokens) - (self._n - 1) * self._block + 1
            return lengths
        return self._ends - self._starts + 2

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, Any]:
        # (epoch, index) or (epoch, index, batch) from MLMSampler; the batch number feeds a masking schedule.
        epoch, index, *batch = key if isinstance(key, tuple) else (0, key)
        if self.layout == "packed":
            body = self._read(index * self._block, (index + 1) * self._block)
            ids = np.concatenate([self.cls, body.astype(np.int64)])
        else:
            body = self._read(int(self._starts[index]), int(self._ends[index]))
            ids = np.concatenate([self.cls, body.astype(np.int64), self.sep])
        item = {"input_ids": ids, "index": int(index), "epoch": int(epoch)}
        if batch:
            item["batch"] = int(batch[0])
        return item
