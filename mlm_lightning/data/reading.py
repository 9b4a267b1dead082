"""Reading text files into documents: the file types, their ``datasets`` builders, UTF-8 checks, non-text rows.

To add an input format, map its suffix to a ``datasets`` builder in :data:`BUILDERS` (and, if the builder needs
options, pass them in :func:`load_documents`).
"""

from __future__ import annotations

import codecs
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from mlm_lightning.errors import MLMError
from mlm_lightning.quiet import no_datasets_progress

#: File suffix -> the ``datasets`` builder that reads it.
BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_SUFFIXES = (".txt", ".text")  # read by the text builder: the only one that can replace bytes that are not UTF-8
_SAMPLE_BY = {"line": "line", "paragraph": "paragraph", "file": "document"}
_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape decodes a byte that is not UTF-8 to


# Byte-order marks of the other Unicode encodings, longest first (UTF-32 LE's starts with UTF-16 LE's). ASCII text in
# UTF-16 is mostly valid UTF-8 (each letter followed by a NUL byte): with encoding_errors=replace it would be read,
# and trained on, as letters and NULs. So such a file is refused whatever the setting, with the way to convert it.
_OTHER_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "little-endian"),
    (codecs.BOM_UTF32_BE, "UTF-32", "big-endian"),
    (codecs.BOM_UTF16_LE, "UTF-16", "little-endian"),
    (codecs.BOM_UTF16_BE, "UTF-16", "big-endian"),
)


def _check_not_utf16(path: Path, start: bytes) -> None:
    """Fails with the ``iconv`` command to run when ``start`` (a file's first bytes) is a UTF-16/32 byte-order mark."""
    for bom, encoding, order in _OTHER_BOMS:
        if start.startswith(bom):
            converted = path.with_name(f"{path.stem}.utf8{path.suffix}")
            raise MLMError(
                f"{path}: looks like {encoding}, not UTF-8 (it starts with a {encoding} {order} byte-order mark). "
                f"Convert it to UTF-8, e.g. iconv -f {encoding} -t UTF-8 {path} > {converted}, and train on that"
            )


def _digest(path: Path, utf8: Literal["strict", "replace"] | None) -> tuple[str, int]:
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
            if decoder is not None and offset == 0:
                _check_not_utf16(path, chunk)
            if decoder is not None:
                try:
                    invalid += len(_ESCAPED.findall(decoder.decode(chunk)))
                except UnicodeDecodeError as err:
                    hint = (
                        ", or set data.encoding_errors=replace to read undecodable bytes as U+FFFD"
                        if path.suffix.lower() in TEXT_SUFFIXES
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


def file_digest(path: Path, encoding_errors: Literal["strict", "replace"]) -> tuple[str, int]:
    """Content hash of a text file and how many of its bytes are read as U+FFFD; checks that it is readable text.

    Only the text builder can replace bad bytes (``encoding_errors=replace``); ``.jsonl``/``.csv`` readers would
    fail later with a traceback, so they must be valid UTF-8. ``.parquet`` is binary and not decoded.
    """
    kind = path.suffix.lower()
    return _digest(path, None if kind == ".parquet" else encoding_errors if kind in TEXT_SUFFIXES else "strict")


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
def load_documents(
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
        builder = BUILDERS.get(f.suffix.lower())
        if builder is None:
            raise MLMError(f"{f}: unsupported file type '{f.suffix}' (use one of {', '.join(BUILDERS)})")
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
