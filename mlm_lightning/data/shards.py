"""Tokenized shards in a folder or an object store: what ``python -m mlm_lightning shard`` writes and streaming reads.

A shard set is a folder (local path or fsspec URL: ``s3://``, ``gs://``, ``az://``...) holding

* ``shard-00000.parquet``...: rows of the layout, exactly as :class:`~mlm_lightning.data.rows.TokenRows` serves
  them (``[CLS]``/``[SEP]`` included), columns ``input_ids`` (list of the token type) and ``index`` (the row's
  place in the tokenized corpus: with the seed and epoch it fixes the row's mask, as in the local mode);
* ``shard-00000.json``...: each shard's record (rows, bytes, blake2b digest), written after its shard: a resumed
  ``shard`` run keeps the shards that have one;
* ``manifest.json``, written last: the tokenizer (name, fingerprint, vocabulary size), the layout and sequence
  length, the corpus's statistics, and every shard's record. A set without it is incomplete.

The text is read and tokenized by the data module's own cache (:mod:`.cache`: every input form, the same
tokenization and special-token rules, memory bounded by ``datasets``' Arrow files), so a shard row is the row the
local mode would train on.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

from mlm_lightning.errors import MLMError

MANIFEST = "manifest.json"
SHARD_FORMAT = "mlm-lightning-shards"
SHARD_VERSION = 1
ROW_GROUP_ROWS = 2_000  # rows per Parquet row group: what one read decodes at a time
T = TypeVar("T")

# Where each store's client looks for credentials: named when none are found.
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; AWS_ENDPOINT_URL for an S3-compatible store)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file), or gcloud's application-default login",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file), or gcloud's application-default login",
    "az": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY",
    "abfs": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY",
}
PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def blake2b(data: bytes) -> str:
    """The digest recorded for a shard (the cache's: blake2b, 16 bytes)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def _protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path in it; one line when the store's package is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        package = PACKAGES.get(_protocol(url))
        hint = f": pip install {package}" if package else ""
        raise MLMError(f"cannot open {url} ({err}){hint}") from None


def _credentials_missing(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) says the store's client found no credentials."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if type(current).__name__ in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def store_call(url: str, what: str, call: Callable[[], T], retries: int = 3, wait: float = 1.0) -> T:
    """``call()`` (one request to the store about ``url``), tried ``retries`` more times on errors of the store.

    Missing credentials fail at once, naming the environment variables; a missing object is
    :class:`FileNotFoundError` (the caller says what it means); anything else after the last try is one line.
    """
    for attempt in range(retries + 1):
        try:
            return call()
        except FileNotFoundError:
            raise
        except MLMError:
            raise
        except Exception as err:  # the stores' clients raise many types (botocore, aiohttp, OSError)
            if _credentials_missing(err):
                names = CREDENTIALS.get(_protocol(url), "the credentials of its store")
                raise MLMError(f"no credentials to read {url}: set {names}") from None
            if attempt == retries:
                reason = " ".join(str(err).split()) or type(err).__name__
                raise MLMError(f"{what} {url} failed after {retries + 1} tries: {reason}") from err
            time.sleep(wait * 2**attempt)
    raise AssertionError("unreachable")


def join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def read_json(url: str, retries: int = 3) -> dict[str, Any] | None:
    """A small JSON object from a folder or a store; ``None`` when it does not exist."""
    fs, path = filesystem(url)
    try:
        data = store_call(url, "reading", lambda: fs.cat_file(path), retries)
    except FileNotFoundError:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        raise MLMError(f"{url} is not valid JSON (damaged? write the shards again)") from None
    if not isinstance(value, dict):
        raise MLMError(f"{url} is not a JSON object (damaged? write the shards again)")
    return value


def _put(url: str, data: bytes, retries: int = 3) -> None:
    """Writes ``data`` to ``url`` whole or not at all: an object store's PUT is atomic; a local file is renamed."""
    if _protocol(url) == "file":
        from mlm_lightning.io.atomic import atomic_file

        with atomic_file(url.removeprefix("file://")) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = filesystem(url)
    store_call(url, "writing", lambda: fs.pipe_file(path, data), retries)


def read_manifest(url: str, retries: int = 3) -> dict[str, Any]:
    """The checked manifest of the shard set at ``url``; one line when it is missing or not a shard set."""
    manifest = read_json(join(url, MANIFEST), retries)
    if manifest is None:
        raise MLMError(
            f"{url} holds no {MANIFEST}: it is not a (complete) shard set. Write it with "
            f"`python -m mlm_lightning shard --config ... --output {url}`"
        )
    try:
        if manifest["format"] != SHARD_FORMAT or manifest["version"] != SHARD_VERSION:
            raise ValueError("another format")
        for shard in manifest["shards"]:
            int(shard["rows"]), int(shard["bytes"]), str(shard["blake2b"]), str(shard["name"])
        manifest["tokenizer"]["fingerprint"], manifest["layout"], int(manifest["max_seq_length"])
    except (KeyError, TypeError, ValueError) as err:
        raise MLMError(
            f"{join(url, MANIFEST)} is not a manifest of this version ({type(err).__name__}: {err})"
        ) from None
    if not manifest["shards"]:
        raise MLMError(f"{url}: the manifest lists no shard")
    return manifest


def _row_table(rows: Any, start: int, stop: int, dtype: np.dtype) -> Any:
    """Rows ``[start, stop)`` of a :class:`TokenRows` as an Arrow table (``input_ids``, ``index``)."""
    import pyarrow as pa

    ids = [rows[i]["input_ids"].astype(dtype) for i in range(start, stop)]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    values = pa.array(np.concatenate(ids) if ids else np.zeros(0, dtype=dtype))
    column = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return pa.table({"input_ids": column, "index": pa.array(np.arange(start, stop, dtype=np.int64))})


def _write_shard(rows: Any, url: str, i: int, start: int, stop: int, dtype: str, plan: str) -> dict[str, Any]:
    """Writes shard ``i`` (rows ``[start, stop)``) and then its record; returns the record."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()  # one shard in memory: its size is bounded by --rows_per_shard
    pq.write_table(_row_table(rows, start, stop, np.dtype(dtype)), buffer, row_group_size=ROW_GROUP_ROWS)
    data = buffer.getvalue()
    record = {
        "name": shard_name(i),
        "rows": stop - start,
        "first_index": start,
        "bytes": len(data),
        "blake2b": blake2b(data),
        "plan": plan,
    }
    _put(join(url, shard_name(i)), data)
    _put(join(url, shard_name(i).replace(".parquet", ".json")), json.dumps(record).encode())
    return record


def _write_shards(rows: Any, url: str, jobs: list[tuple[int, int, int]], dtype: str, plan: str) -> list[dict]:
    return [_write_shard(rows, url, i, start, stop, dtype, plan) for i, start, stop in jobs]


def _done(url: str, i: int, plan: str) -> dict[str, Any] | None:
    """The record of shard ``i`` if a previous run of the same plan finished it (record, and object of its size)."""
    record = read_json(join(url, shard_name(i).replace(".parquet", ".json")))
    if record is None or record.get("plan") != plan:
        return None
    fs, path = filesystem(join(url, shard_name(i)))
    try:
        size = store_call(url, "reading", lambda: fs.size(path))
    except FileNotFoundError:
        return None
    return record if size == record.get("bytes") else None


def write_shard_set(dm: Any, output: str, rows_per_shard: int, workers: int = 1) -> dict[str, Any]:
    """Tokenizes ``dm``'s training split (its cache) and writes it as a verified shard set to ``output``.

    Args:
        dm: An :class:`MLMDataModule` (its training files, tokenizer, layout and sequence length).
        output: A folder or an fsspec URL (``s3://bucket/prefix``).
        rows_per_shard: Rows per shard (a shard is held in memory while written, and by each reader).
        workers: Processes writing shards (tokenization uses ``data.num_proc``).

    Returns:
        The manifest written.
    """
    from mlm_lightning.data.cache import tokenizer_fingerprint
    from mlm_lightning.data.token_stream import token_dtype

    if _protocol(output) == "file":
        from mlm_lightning.io.atomic import check_can_write

        check_can_write(output.removeprefix("file://"), "--output")
    tok = dm.tokenizer
    identity = {
        "name": dm.tokenizer_path,
        "fingerprint": tokenizer_fingerprint(tok),
        "vocab_size": len(tok),
    }
    corpus = dm.corpora["train"]
    plan = hashlib.blake2b(
        json.dumps([corpus.key, identity, dm.layout, dm.max_seq_length, rows_per_shard]).encode(), digest_size=12
    ).hexdigest()
    existing = read_json(join(output, MANIFEST))
    if existing is not None:
        if existing.get("plan") == plan:
            return existing  # finished before: nothing to do
        raise MLMError(
            f"{output} already holds another shard set (other text, tokenizer, layout or rows_per_shard): "
            f"choose another --output, or delete it first"
        )
    dm.cache.entry(corpus)  # tokenized once, in the local cache (bounded memory; data.num_proc workers)
    rows = dm.split_rows("train")  # validation sets are not part of a shard set: they stay files
    n = len(rows)
    if n == 0:
        raise MLMError("the training split is empty: nothing to shard")
    dtype = token_dtype(len(tok)).name
    bounds = [(i, s, min(s + rows_per_shard, n)) for i, s in enumerate(range(0, n, rows_per_shard))]
    records: dict[int, dict[str, Any]] = {}
    for i, _, _ in bounds:  # a resumed run keeps what an interrupted one finished
        record = _done(output, i, plan)
        if record is not None:
            records[i] = record
    todo = [b for b in bounds if b[0] not in records]
    if workers > 1 and len(todo) > 1:
        import multiprocessing

        groups = [todo[w::workers] for w in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_write_shards, *zip(*[(rows, output, g, dtype, plan) for g in groups if g])):
                records.update((int(r["name"][6:11]), r) for r in done)
    else:
        for record in _write_shards(rows, output, todo, dtype, plan):
            records[int(record["name"][6:11])] = record
    meta = dm.corpus_meta("train")
    manifest = {
        "format": SHARD_FORMAT,
        "version": SHARD_VERSION,
        "plan": plan,
        "tokenizer": identity,
        "layout": dm.layout,
        "max_seq_length": dm.max_seq_length,
        "token_dtype": dtype,
        "files": [str(f) for f in corpus.files],
        "documents": int(meta["documents"]),
        "tokens": int(meta["tokens"]),
        "rows": n,
        "row_tokens": int(rows.row_lengths().sum()),
        "shards": [{k: v for k, v in records[i].items() if k != "plan"} for i, _, _ in bounds],
    }
    _put(join(output, MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def iter_shard(table: Any, order: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
    """``(input_ids, index)`` of a shard's rows in ``order``."""
    column = table.column("input_ids").combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy()
    index = table.column("index").to_numpy()
    for i in order:
        yield values[offsets[i] : offsets[i + 1]], int(index[i])
