"""Reading, tokenizing and packing text for MLM: ``MLMDataModule``.

Text is read with ``datasets`` (``text``/``json``/``csv``/``parquet`` builders), tokenized once with
``datasets.map`` (batched, ``num_proc`` workers) and stored as one flat token stream per split in a cache
folder whose name is a hash of the files' contents, the tokenizer and the text settings. The stream holds
every document followed by ``[SEP]``; both layouts are views over it, so changing ``layout`` or
``max_seq_length`` never re-tokenizes:

* ``packed``: block *i* is ``[CLS]`` + stream[i*(L-1) : (i+1)*(L-1)]; no padding and no token dropped
  (only the very last block may be shorter).
* ``line_by_line``: one row per document, ``[CLS]`` doc ``[SEP]``; a document longer than the model
  takes is split into consecutive windows rather than truncated.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mlm_lightning.atomic import check_can_write
from mlm_lightning.errors import MLMError
from mlm_lightning.masking import MLMCollator
from mlm_lightning.quiet import no_datasets_progress, tokenization_progress
from mlm_lightning.settings import ClosedUnitInterval, NonNegativeInt, NonZeroProbability, PositiveInt, SequenceLength
from mlm_lightning.sources import CACHE_SETTING, cache_write_error, default_cache_dir, resolve_files, resolve_pkg
from mlm_lightning.token_stream import document_lengths, tokenize_documents, write_token_stream

CACHE_VERSION = 3  # 2: sizes and digests in meta.json; 3: special-token strings are text, long documents in pieces
_BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_SAMPLE_BY = {"line": "line", "paragraph": "paragraph", "file": "document"}
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- datasets
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

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (spawned dataloader workers, ddp_spawn) must not copy the whole memory-mapped corpus.
        return {**self.__dict__, "tokens": None, "_file": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tokens = np.load(self.folder / "tokens.npy", mmap_mode="r")
        self._file = open(self.folder / "tokens.npy", "rb")  # noqa: SIM115

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream (``stop`` clipped to its end)."""
        # pread rather than the memory map: each random read through the map made about 500 KB of the file
        # resident in this process (the kernel's read-ahead), so a few hundred steps mapped most of a large
        # corpus. Read this way, the file's pages stay in the kernel's page cache, outside the process.
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

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if self.layout == "packed":
            body = self._read(index * self._block, (index + 1) * self._block)
            ids = np.concatenate([self.cls, body.astype(np.int64)])
        else:
            body = self._read(int(self._starts[index]), int(self._ends[index]))
            ids = np.concatenate([self.cls, body.astype(np.int64), self.sep])
        return {"input_ids": ids, "index": int(index), "epoch": int(epoch)}


class MLMSampler(DistributedSampler):
    """Order of rows for one device: shuffled by ``seed + epoch``, sharded across devices, optionally bucketed.

    Yields ``(epoch, index)`` so the collator draws that epoch's masks. It subclasses ``DistributedSampler``
    so that Lightning leaves it in place under DDP (and still calls :meth:`set_epoch` every epoch) instead of
    wrapping it; it shards by itself.

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
        super().__init__(range(num_rows), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.num_rows = num_rows
        self.pad = pad
        self.batch_size = batch_size
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self._resume: tuple[int, int] | None = None  # (epoch, batches already consumed in it)

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

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        rows = self.shard(epoch)
        if self._resume is not None:
            resume_epoch, consumed = self._resume
            self._resume = None
            if resume_epoch == epoch:
                rows = rows[consumed * self.batch_size :]
        return ((epoch, int(i)) for i in rows)  # lazily: a list would cost ~100 bytes per row

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

    progress: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "consumed_batches": int(self.progress() if self.progress else 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume(int(state["epoch"]), int(state["consumed_batches"]))


# -------------------------------------------------------------------------------------------- the cache
_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape decodes a byte that is not UTF-8 to


def _file_digest(path: Path, utf8: Literal["strict", "replace"] | None) -> tuple[str, int]:
    """Content hash of a file, and how many of its bytes are not UTF-8.

    ``strict`` fails on the first such byte; ``replace`` counts them (they become U+FFFD when read); ``None``
    (binary formats) does not decode at all.
    """
    digest = hashlib.blake2b(digest_size=16)
    errors = {"strict": "strict", "replace": "surrogateescape"}.get(utf8 or "")
    decoder = codecs.getincrementaldecoder("utf-8")(errors) if errors else None
    offset, invalid = 0, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
            if decoder is not None:
                try:
                    invalid += len(_ESCAPED.findall(decoder.decode(chunk)))
                except UnicodeDecodeError as err:
                    hint = (
                        ", or set data.encoding_errors=replace to read undecodable bytes as U+FFFD"
                        if path.suffix.lower() in (".txt", ".text")
                        else " (data.encoding_errors=replace covers .txt files only)"
                    )
                    raise MLMError(
                        f"{path}: byte {offset + err.start} is not valid UTF-8. Convert the file to UTF-8{hint}."
                    ) from None
            offset += len(chunk)
    if decoder is not None:
        try:
            invalid += len(_ESCAPED.findall(decoder.decode(b"", final=True)))
        except UnicodeDecodeError:
            raise MLMError(f"{path}: ends in the middle of a UTF-8 character (truncated file?)") from None
    if offset == 0:
        raise MLMError(f"{path}: file is empty")
    return digest.hexdigest(), invalid


_STREAM_FILES = ("tokens.npy", "doc_offsets.npy")  # what each split folder of a cache entry holds
_VERIFIED: set[tuple[Any, ...]] = set()  # entries whose digests this process has checked (with their files' stats)


def _blake2b(path: Path) -> str:
    """Digest of a file, read in chunks (blake2b: fast in software, no need for a cryptographic margin)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _checksums(folder: Path, splits: list[str]) -> dict[str, dict[str, Any]]:
    """``{"split/file": {"bytes", "blake2b"}}`` for every stream file of a cache entry, as written."""
    return {
        f"{s}/{n}": {"bytes": (folder / s / n).stat().st_size, "blake2b": _blake2b(folder / s / n)}
        for s in splits
        for n in _STREAM_FILES
    }


def _stamp(folder: Path, names: list[str]) -> tuple[Any, ...]:
    """What identifies the verified state of an entry's files cheaply: path, and each file's size, mtime, inode."""
    stats = [(folder / n).stat() for n in names]
    return (str(folder.resolve()), *((n, st.st_size, st.st_mtime_ns, st.st_ino) for n, st in zip(names, stats)))


def _entry_problem(folder: Path, splits: list[str]) -> tuple[str | None, dict[str, Any] | None]:
    """Checks a cache entry: ``(None, meta)`` when sound, else ``(what is wrong, None)``.

    Always (cheap): ``meta.json`` parses with the expected fields and every file has its recorded size. The
    digests are compared once per process for each state of the files (memoized by size, mtime and inode), so
    creating dataloaders again does not re-read a large corpus.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
        sums = meta["checksums"]
        expected = {
            f"{s}/{n}": (int(sums[f"{s}/{n}"]["bytes"]), str(sums[f"{s}/{n}"]["blake2b"]))
            for s in splits
            for n in _STREAM_FILES
        }
        if meta["version"] != CACHE_VERSION or not all(isinstance(meta["splits"][s], dict) for s in splits):
            raise ValueError("another format")
    except FileNotFoundError:
        return "meta.json is missing", None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"meta.json is unreadable or incomplete ({type(err).__name__})", None
    for rel, (size, _) in expected.items():
        try:
            actual = (folder / rel).stat().st_size
        except OSError:
            return f"{rel} is missing", None
        if actual != size:
            return f"{rel} has {actual:,} bytes instead of {size:,}", None
    stamp = _stamp(folder, sorted(expected))
    if stamp not in _VERIFIED:
        for rel, (_, digest) in expected.items():
            if _blake2b(folder / rel) != digest:
                return f"{rel} does not match its recorded digest", None
        _VERIFIED.add(stamp)
    return None, meta


def _discard(folder: Path) -> None:
    """Removes a cache entry: first renamed out of its key in one step, so no half-deleted entry is ever seen."""
    aside = folder.with_name(f".{folder.name}.damaged-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return  # another process removed (and maybe rebuilt) it already
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes its output."""
    digest = hashlib.blake2b(digest_size=16)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(
        backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode()
    )
    digest.update(type(tokenizer).__name__.encode())
    return digest.hexdigest()


def _text_problems(ds: Any) -> tuple[int, int, np.ndarray]:
    """Rows of a one-column (``text``) dataset whose value is null, or not a string (numbers, booleans, objects).

    Read from the Arrow column as the reader typed it, before any cast to string: a column of numbers is
    ``int64``/``double``, a ``.jsonl`` column mixing types is ``Json`` (each value stored as JSON text, so a
    string is the one that starts with a quote). Returns the counts and a mask of the rows to keep.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    column = ds.data.column("text")  # chunked: never copied whole
    nulls = column.null_count
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        if not nulls:  # the usual case: nothing to compute
            return 0, 0, np.ones(len(column), dtype=bool)
        text = pc.is_valid(column)
    elif isinstance(ds.features["text"], datasets.Json):
        storage = pa.chunked_array([c.storage for c in column.chunks], type=column.type.storage_type)
        text = pc.fill_null(pc.starts_with(storage.cast(pa.large_string()), '"'), False)
    else:  # numbers, booleans, lists, objects: no row is text
        return nulls, len(column) - nulls, np.zeros(len(column), dtype=bool)
    keep = text.to_numpy().astype(bool)
    return nulls, len(keep) - int(keep.sum()) - nulls, keep


def _refuse(path: str, column: str, ds: Any, keep: np.ndarray) -> MLMError:
    """The error for ``non_text_rows="error"``: the file, its first row that is null or not text, and its value."""
    row = int(np.flatnonzero(~keep)[0])
    value = ds[row]["text"]
    what = "is null" if value is None else f"is the {type(value).__name__} {repr(value)[:40]}"
    return MLMError(
        f"{path}: row {row + 1}: {column!r} {what}, not text. Fix the file, or set data.non_text_rows=warn to drop "
        f"(and count) such rows."
    )


@no_datasets_progress()  # loading local files: nothing a progress bar would tell
def _load_documents(
    files: list[Path],
    text_layout: str,
    text_column: str,
    encoding_errors: str,
    workdir: Path,
    num_proc: int | None = None,
    non_text_rows: Literal["warn", "error"] = "warn",
    counts: dict[str, int] | None = None,
):
    """Reads files into one ``datasets.Dataset`` with a single ``text`` column, dropping blank documents.

    Rows of ``.jsonl``/``.csv``/``.parquet`` files whose text is null or not a string are dropped and counted
    into ``counts`` (``null_rows``, ``non_text_rows``) with one warning, or, with ``non_text_rows="error"``,
    refused naming the first one.
    """
    import datasets

    parts = []
    problems: list[str] = []
    counts = {} if counts is None else counts
    counts.update(null_rows=0, non_text_rows=0)
    by_builder: dict[str, list[str]] = {}
    for f in files:
        builder = _BUILDERS.get(f.suffix.lower())
        if builder is None:
            raise MLMError(f"{f}: unsupported file type '{f.suffix}' (use one of {', '.join(_BUILDERS)})")
        by_builder.setdefault(builder, []).append(str(f))
    # .jsonl/.csv/.parquet one file at a time: datasets would give every file the first one's column type (a
    # later file's numbers cast to strings, its JSON values left encoded), hiding the rows that are not text.
    groups: list[tuple[str, list[str]]] = []
    for builder, paths in by_builder.items():
        groups += [(builder, paths)] if builder == "text" else [(builder, [p]) for p in paths]
    for builder, paths in groups:
        kwargs: dict[str, Any] = {}
        if builder == "text":
            kwargs = {"sample_by": _SAMPLE_BY[text_layout], "encoding_errors": encoding_errors}
        try:
            ds = datasets.load_dataset(builder, data_files=paths, split="train", cache_dir=str(workdir), **kwargs)
        except Exception as err:  # datasets wraps parser errors in several types
            raise MLMError(f"could not read {', '.join(paths)}: {err}") from err
        column = "text" if builder == "text" else text_column
        if column not in ds.column_names:
            raise MLMError(
                f"{', '.join(paths)}: no column '{column}' (columns: {', '.join(ds.column_names)}); "
                f"set data.text_column"
            )
        ds = ds.select_columns([column])
        if column != "text":
            ds = ds.rename_column(column, "text")
        if builder != "text":
            nulls, others, keep = _text_problems(ds)
            if nulls or others:
                if non_text_rows == "error":
                    raise _refuse(paths[0], column, ds, keep)
                problems.append(f"{paths[0]}: {others:,} not text, {nulls:,} null")
                counts["null_rows"] += nulls
                counts["non_text_rows"] += others
                ds = ds.select(np.flatnonzero(keep))
        if isinstance(ds.features["text"], datasets.Json):  # the strings of a mixed column, decoded
            ds = ds.map(
                lambda b: {"text": b["text"]},
                batched=True,
                features=datasets.Features({"text": datasets.Value("string")}),
            )
        elif ds.features["text"] != datasets.Value("string"):  # a cast rewrites the whole table: only when needed
            ds = ds.cast_column("text", datasets.Value("string"))
        parts.append(ds)
    if problems:
        rank_zero_warn(
            f"dropped {counts['non_text_rows']:,} rows whose text is not a string (numbers, booleans, objects) and "
            f"{counts['null_rows']:,} null rows: {'; '.join(problems)}. Set data.non_text_rows=error to refuse them."
        )
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    # In workers, like tokenization: the main process then never maps (and holds) the whole text.
    return ds.filter(
        lambda b: [bool(t) and not t.isspace() for t in b["text"]],  # isspace: no copy of a long document
        batched=True,
        num_proc=num_proc,
        desc="drop blank documents",
    )


# ----------------------------------------------------------------------------------------- data module
class MLMDataModule(L.LightningDataModule):
    """Reads, tokenizes (once, cached), packs and masks text for masked-language-model training.

    Args:
        train_files: Paths, globs, folders, ``pkg://package/path`` package data, or ``http(s)://`` URLs of
            ``.txt``, ``.jsonl``, ``.csv`` or ``.parquet`` files.
        val_files: Validation files (same forms). ``None`` holds out ``val_fraction`` of the documents.
        val_fraction: Share of training documents held out for validation (seeded) when ``val_files`` is unset.
        test_files: Files for ``test``; ``None`` tests on the validation split.
        text_layout: How ``.txt`` files split into documents: one per ``line``, one per ``paragraph``
            (blank-line separated), or one per ``file``.
        text_column: The text column of ``.jsonl``, ``.csv`` and ``.parquet`` files.
        non_text_rows: Rows of those files whose text is null, or not a string (a number, boolean or object;
            in a ``.csv``, a column whose every value reads as a number): ``warn`` drops them, counts them (one
            warning, and the corpus report) and carries on; ``error`` stops at the first (file, row, value).
        encoding_errors: ``strict`` stops at the first byte that is not UTF-8 (naming file and offset);
            ``replace`` reads such bytes in ``.txt`` files as U+FFFD, counts them (a warning per file and
            ``replaced_bytes``) and carries on. ``.jsonl``/``.csv`` files must be valid UTF-8 either way.
        tokenizer: Tokenizer name or path (``pkg://`` allowed). ``None`` uses the model's
            (``model.model_name_or_path``), which the command line fills in.
        layout: ``packed`` joins documents with ``[SEP]`` into full blocks (no padding); ``line_by_line``
            keeps one document per row (long ones split into windows), padding each batch to its longest row.
        max_seq_length: Tokens per row, special tokens included; at most the model's position embeddings.
        mlm_probability: Share of tokens (or words, with ``whole_word_mask``) chosen for prediction.
        mask_replace_prob: Share of chosen tokens replaced by ``[MASK]``.
        random_replace_prob: Share of chosen tokens replaced by a random token (the rest stay as they are).
        whole_word_mask: Choose whole words rather than single WordPiece tokens.
        batch_size: Rows per training batch on each device.
        eval_batch_size: Rows per validation/test batch; ``None`` uses ``batch_size``.
        num_workers: Dataloader worker processes for masking and collation of training batches (0 = in the
            training process; validation and test batches are always collated there).
        num_proc: Processes for tokenization (``datasets.map``); ``None`` tokenizes in this process.
        seed: Seed of the validation split, the shuffling and the masks (validation masks are fixed by it).
        cache_dir: Where tokenized corpora and downloads are kept; ``None`` = ``$MLM_LIGHTNING_CACHE`` or
            ``~/.cache/mlm_lightning``.
        prepare_data_per_node: Tokenize on the first process of every machine (``True``: machines do not share
            ``cache_dir``) or only on the first process of the whole job (``False``: a shared file system).
    """

    def __init__(
        self,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        val_fraction: ClosedUnitInterval = 0.05,
        test_files: list[str] | None = None,
        text_layout: Literal["line", "paragraph", "file"] = "line",
        text_column: str = "text",
        non_text_rows: Literal["warn", "error"] = "warn",
        encoding_errors: Literal["strict", "replace"] = "strict",
        tokenizer: str | None = None,
        layout: Literal["packed", "line_by_line"] = "packed",
        max_seq_length: SequenceLength = 128,
        mlm_probability: NonZeroProbability = 0.15,
        mask_replace_prob: ClosedUnitInterval = 0.8,
        random_replace_prob: ClosedUnitInterval = 0.1,
        whole_word_mask: bool = False,
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
        num_proc: PositiveInt | None = None,
        seed: NonNegativeInt = 1234,
        cache_dir: str | None = None,
        prepare_data_per_node: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # into checkpoints and the dashboard's hparams (export's model card reads them)
        self.prepare_data_per_node = prepare_data_per_node  # read by Lightning to pick the ranks that prepare
        if max_seq_length < 8:
            raise MLMError(f"data.max_seq_length={max_seq_length} is too small (at least 8)")
        if val_files is None and not 0.0 < val_fraction < 1.0:
            raise MLMError(f"data.val_fraction must be in (0, 1) when data.val_files is unset, got {val_fraction}")
        if mask_replace_prob + random_replace_prob > 1.0:
            raise MLMError(
                f"data.mask_replace_prob + data.random_replace_prob must be at most 1 (the rest of the chosen tokens "
                f"stay as they are), got {mask_replace_prob} + {random_replace_prob}"
            )
        self.train_files = train_files
        self.val_files = val_files
        self.val_fraction = val_fraction
        self.test_files = test_files
        self.text_layout = text_layout
        self.text_column = text_column
        self.non_text_rows = non_text_rows
        self.encoding_errors = encoding_errors
        self.tokenizer_name = tokenizer
        self.layout = layout
        self.max_seq_length = max_seq_length
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word_mask = whole_word_mask
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.datasets: dict[str, TokenRows] = {}
        self.replaced_bytes: dict[str, int] = {}  # file -> bytes read as U+FFFD (encoding_errors=replace)
        self._corpus_dirs: dict[str, Path] = {}
        self._metas: dict[str, dict[str, Any]] = {}  # cache key -> its checked meta.json

    # -- tokenizer --------------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> Any:
        """The fast tokenizer (loaded on first use)."""
        from transformers import AutoTokenizer

        if not self.tokenizer_name:
            raise MLMError("no tokenizer: set data.tokenizer, or model.model_name_or_path to a pretrained model")
        try:
            tok = AutoTokenizer.from_pretrained(resolve_pkg(self.tokenizer_name))
        except (OSError, ValueError) as err:
            raise MLMError(
                f"could not load tokenizer '{self.tokenizer_name}': {err}. Offline, pass a local folder "
                f"(for example one written by `export` or `train-tokenizer`)."
            ) from err
        if tok.mask_token_id is None or tok.pad_token_id is None:
            raise MLMError(f"tokenizer '{self.tokenizer_name}' has no [MASK] or [PAD] token, so it cannot do MLM")
        return tok

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer's name or path as configured (what the model records for export)."""
        return self.tokenizer_name or ""

    @property
    def vocab_size(self) -> int:
        """Size of the tokenizer's vocabulary, added tokens included (linked to ``model.vocab_size``)."""
        return len(self.tokenizer)

    # -- caching ----------------------------------------------------------------------------------------
    def _corpus_key(self, name: str, files: list[Path], extra: dict[str, Any]) -> str:
        digests = []
        for f in files:
            # Only the text builder can replace bad bytes; json/csv readers would fail later with a traceback.
            kind = f.suffix.lower()
            utf8 = None if kind == ".parquet" else self.encoding_errors if kind in (".txt", ".text") else "strict"
            digest, invalid = _file_digest(f, utf8)
            digests.append([str(f), digest])
            if invalid:
                self.replaced_bytes[str(f)] = invalid
                rank_zero_warn(f"{f}: {invalid} bytes are not valid UTF-8 and are read as U+FFFD")
        payload = {
            "version": CACHE_VERSION,
            "name": name,
            "files": digests,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "text_layout": self.text_layout,
            "text_column": self.text_column,
            "non_text_rows": self.non_text_rows,
            "encoding_errors": self.encoding_errors,
            **extra,
        }
        return hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=12).hexdigest()

    def _corpora(self) -> dict[str, tuple[str, list[Path], dict[str, Any]]]:
        """Cache entries needed: name -> (key, files, split settings). Hashes files once per instance."""
        if hasattr(self, "_corpora_memo"):
            return self._corpora_memo
        if not self.train_files:
            raise MLMError("no training data: set data.train_files")
        entries: dict[str, tuple[str, list[Path], dict[str, Any]]] = {}
        train = resolve_files(self.train_files, self.cache_dir)
        if self.val_files:
            entries["train"] = (self._corpus_key("train", train, {}), train, {})
            val = resolve_files(self.val_files, self.cache_dir)
            entries["val"] = (self._corpus_key("val", val, {}), val, {})
        else:
            split = {"val_fraction": self.val_fraction, "split_seed": self.seed}
            key = self._corpus_key("train+val", train, split)
            entries["train"] = entries["val"] = (key, train, split)
        if self.test_files:
            test = resolve_files(self.test_files, self.cache_dir)
            entries["test"] = (self._corpus_key("test", test, {}), test, {})
        self._corpora_memo = entries
        return entries

    def _build(self, key: str, files: list[Path], split: dict[str, Any], repair: bool = True) -> Path:
        """Tokenizes ``files`` into ``cache_dir/corpora/key`` unless a sound entry is already there.

        Args:
            key: The entry's key (:meth:`_corpus_key`).
            files: The text files.
            split: The validation split's settings (empty: the files are one split, ``all``).
            repair: A damaged entry is rebuilt, with a warning (the process that prepares data); otherwise it
                is an error naming the folder (other processes must not rebuild what they are all reading).
        """
        final = self.cache_dir / "corpora" / key
        names = ["train", "val"] if split else ["all"]
        if final.exists():
            problem, meta = _entry_problem(final, names)
            if meta is not None:
                self._metas[key] = meta
                return final
            if not repair:
                raise MLMError(
                    f"the tokenization cache entry {final} is damaged ({problem}): delete that folder and run again "
                    f"(it is rebuilt from the text)"
                )
            rank_zero_warn(f"the tokenization cache entry {final} is damaged ({problem}): rebuilding it")
            try:
                _discard(final)
            except OSError as err:
                raise MLMError(f"cannot remove the damaged cache entry {final} ({err}): delete it yourself") from err
        check_can_write(final.parent, CACHE_SETTING)
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        log.info("tokenizing %d file(s), %.1f MB, into %s (once: later runs reuse it)", len(files), size_mb, final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        except OSError as err:  # no room even for a folder (inodes), or lost write access since the check
            raise (cache_write_error(err, final.parent, "the tokenized corpus") or err) from None
        built = False
        try:
            dropped: dict[str, int] = {}  # rows that are null or not text (non_text_rows)
            docs = _load_documents(
                files,
                self.text_layout,
                self.text_column,
                self.encoding_errors,
                work / "hf",
                self.num_proc,
                self.non_text_rows,
                dropped,
            )
            if len(docs) == 0:
                raise MLMError(f"no text in {', '.join(map(str, files))} (empty or whitespace only)")
            if split and len(docs) < 2:
                raise MLMError(
                    f"only {len(docs)} document in the training files: cannot hold out data.val_fraction for "
                    f"validation. Set data.val_files, or data.text_layout to split the text into more documents."
                )
            tok = self.tokenizer
            # Tokenize the whole corpus once (contiguous shards per worker), then split by document order.
            with tokenization_progress(int(size_mb * 1e6)):  # a bar in a terminal, for a large corpus only
                ids = tokenize_documents(docs, tok, self.num_proc)
            lengths = document_lengths(ids)
            if split:
                # The same split as ``datasets``' train_test_split(test_size=n_val, seed=split_seed).
                n_val = max(1, round(len(docs) * split["val_fraction"]))
                perm = np.random.default_rng(split["split_seed"]).permutation(len(docs))
                orders: dict[str, np.ndarray | None] = {"train": perm[n_val:], "val": perm[:n_val]}
            else:
                orders = {"all": None}
            meta: dict[str, Any] = {
                "version": CACHE_VERSION,
                "files": [str(f) for f in files],
                "splits": {},
                "dropped_rows": dropped,
            }
            for name, order in orders.items():
                meta["splits"][name] = write_token_stream(
                    ids, order, work / name, tok.sep_token_id, tok.unk_token_id, len(tok), lengths
                )
            shutil.rmtree(work / "hf", ignore_errors=True)
            meta["checksums"] = _checksums(work, names)  # read back right after writing: still in the page cache
            (work / "meta.json").write_text(json.dumps(meta, indent=1))
            rels = sorted(meta["checksums"])
            try:
                os.replace(work, final)  # atomic: a crash never leaves a half-built corpus under its key
                built = True
                _VERIFIED.add(_stamp(final, rels))  # just digested: this process need not read it again
                self._metas[key] = meta
            except OSError:
                if not (final / "meta.json").is_file():  # another process won the race: fine
                    raise
        except Exception as err:
            # A full disk or a read-only cache: one line, and nothing cached (the work folder goes below).
            explained = cache_write_error(err, final.parent, "the tokenized corpus")
            if explained is not None:
                raise explained from err
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not built:
            return self._build(key, files, split, repair)  # the entry another process built: check it like any
        return final

    def prepare_data(self) -> None:
        """Tokenizes every needed corpus into the cache (runs on one process per machine)."""
        for key, files, split in {e[0]: e for e in self._corpora().values()}.values():
            self._build(key, files, split)

    def corpus_meta(self, split: str) -> dict[str, Any]:
        """Statistics of a split (``train``, ``val``, ``test``) as recorded when it was tokenized.

        ``null_rows`` and ``non_text_rows`` count the rows of the split's files that were dropped (see
        ``non_text_rows``); a split held out of the training files (``val_fraction``) reports ``None`` for them,
        as they are counted under ``train``.
        """
        key, files, how = self._corpora()[split]
        if key not in self._metas:
            self._build(key, files, how, repair=False)
        meta = self._metas[key]
        dropped = meta.get("dropped_rows", {}) if split == "train" or not how else {}
        return {
            **meta["splits"][split if how else "all"],
            "null_rows": dropped.get("null_rows"),
            "non_text_rows": dropped.get("non_text_rows"),
        }

    def _rows(self, split: str) -> TokenRows:
        key, files, how = self._corpora()[split]
        # Not repaired here: under DDP every process sets up, and only the preparing one may rebuild.
        folder = self._build(key, files, how, repair=False) / (split if how else "all")
        tok = self.tokenizer
        return TokenRows(folder, self.layout, self.max_seq_length, tok.cls_token_id, tok.sep_token_id)

    def setup(self, stage: str | None = None) -> None:
        """Memory-maps the tokenized splits that ``stage`` needs."""
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["val"]}
        for split in wanted.get(stage or "fit", ["train", "val"]):
            if split == "test" and not self.test_files:
                self.datasets["test"] = self.datasets.get("val") or self._rows("val")
            elif split not in self.datasets:
                self.datasets[split] = self._rows(split)
            if len(self.datasets[split]) == 0:
                raise MLMError(f"the {split} split is empty")

    # -- loaders ----------------------------------------------------------------------------------------
    def collator(self, train: bool) -> MLMCollator:
        """The masking collator; validation and test use a different, fixed seed stream."""
        tok = self.tokenizer
        continuation = None
        if self.whole_word_mask:
            if type(tok.backend_tokenizer.model).__name__ != "WordPiece":
                raise MLMError("data.whole_word_mask needs a WordPiece tokenizer (BERT-style '##' pieces)")
            vocab = tok.get_vocab()
            continuation = np.zeros(len(tok), dtype=bool)
            for piece, i in vocab.items():
                if piece.startswith("##") and i < len(continuation):
                    continuation[i] = True
        return MLMCollator(
            pad_token_id=tok.pad_token_id,
            mask_token_id=tok.mask_token_id,
            vocab_size=len(tok),
            special_token_ids=tok.all_special_ids,
            mlm_probability=self.mlm_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            seed=self.seed if train else self.seed + 7919,
            continuation_mask=continuation,
            redraw_each_epoch=train,
        )

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        rows = self.datasets[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if not train and len(rows) < world:  # a device with no batch would skip the metric sync the others wait in
            raise MLMError(
                f"the {split} split has {len(rows)} rows for {world} devices: every device needs at least one. "
                f"Use more {split} data, fewer devices or a smaller data.max_seq_length."
            )
        batch_size = self.batch_size if train else self.eval_batch_size
        # Bucketing only matters when rows differ in length (line_by_line); packed rows are all full.
        lengths = rows.row_lengths() if self.layout == "line_by_line" else None
        sampler = MLMSampler(
            len(rows),
            self.seed,
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
            collate_fn=self.collator(train),
            # Evaluation collates in this process: a worker forked from the trainer mid-run (Lightning keeps it
            # until the next validation) ends up holding a private copy of every page the trainer rewrites.
            num_workers=self.num_workers if train else 0,
            persistent_workers=train and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        if train and trainer is not None:
            loader.progress = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val")

    def num_train_batches(self) -> int:
        """Training batches per epoch on one device, computed without building a dataloader."""
        if "train" not in self.datasets:
            self.setup("fit")
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        return math.ceil(math.ceil(len(self.datasets["train"]) / world) / self.batch_size)
