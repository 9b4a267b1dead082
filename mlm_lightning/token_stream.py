"""Tokenizing documents into the cache's flat token stream with memory bounded independently of corpus size.

The corpus never has to fit in memory: ``datasets`` keeps the text and the token ids in Arrow files on disk
(workers of ``datasets.map`` each tokenize a contiguous shard), and :func:`write_token_stream` copies the ids
into ``tokens.npy`` a few million tokens at a time with plain file writes. Only per-document lengths and
offsets (a few bytes per document) are held in memory. Token ids are stored as ``uint16`` when the vocabulary
allows it (4x less disk and page cache than the ``int64`` that ``datasets`` would infer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

TOKENS_PER_WRITE = 4_000_000  # tokens gathered and written per step: bounds memory whatever the document length


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every id of a vocabulary of ``vocab_size`` tokens."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def tokenize_documents(docs: Any, tokenizer: Any, num_proc: int | None) -> Any:
    """Tokenizes the ``text`` column of a ``datasets.Dataset`` into an ``input_ids`` column (no special tokens)."""
    import datasets

    dtype = token_dtype(len(tokenizer))
    features = datasets.Features({"input_ids": datasets.List(datasets.Value(dtype.name))})

    def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
        enc = tokenizer(
            batch["text"],
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return {"input_ids": enc["input_ids"]}

    return docs.map(
        tokenize, batched=True, num_proc=num_proc, remove_columns=["text"], features=features, desc="tokenize"
    )


def document_lengths(ids: Any) -> np.ndarray:
    """Token count of every document of a tokenized dataset (read from the Arrow offsets, not the ids)."""
    if ids._indices is not None:  # a selection: flatten it so the table's rows are the dataset's rows
        ids = ids.flatten_indices()
    chunks = ids.data.column("input_ids").chunks
    if not chunks:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in chunks]).astype(np.int64)


def write_token_stream(
    ids: Any,
    order: np.ndarray | None,
    folder: Path,
    sep_id: int,
    unk_id: int | None,
    vocab_size: int,
    lengths: np.ndarray | None = None,
) -> dict[str, int]:
    """Writes ``tokens.npy`` (every document followed by ``[SEP]``) and ``doc_offsets.npy`` into ``folder``.

    Args:
        ids: Tokenized documents (a ``datasets.Dataset`` with an ``input_ids`` column).
        order: Which documents, in which order (``None``: all, in dataset order).
        folder: Output folder (created).
        sep_id: Id appended after every document.
        unk_id: Id of the unknown token, counted for the statistics (``None``: not counted).
        vocab_size: Vocabulary size, which decides the stored integer type.
        lengths: :func:`document_lengths` of ``ids`` if already known.

    Returns:
        Statistics: documents, content tokens, unknown tokens and the longest document.
    """
    lengths = document_lengths(ids) if lengths is None else lengths
    if order is not None:
        lengths = lengths[order]
        ids = ids.select(order)
    n_docs, n_content = len(lengths), int(lengths.sum())
    doc_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=doc_offsets[1:])
    dtype = token_dtype(vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    # Plain sequential writes rather than a writable memory map, whose dirty pages would count as the
    # process's resident memory until the kernel flushed them.
    unk, written = 0, 0
    rows = max(1, min(10_000, TOKENS_PER_WRITE // max(1, n_content // max(1, n_docs))))
    with open(folder / "tokens.npy", "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n_content + n_docs,)}
        np.lib.format.write_array_header_1_0(fh, header)
        for table in ids.with_format("arrow").iter(batch_size=rows):
            column = table.column("input_ids").combine_chunks()
            offs = column.offsets.to_numpy()
            offs = offs - offs[0]
            vals = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            np.insert(vals, offs[1:], sep_id).tofile(fh)  # a [SEP] after every document
            if unk_id is not None:
                unk += int((vals == unk_id).sum())
            written += len(vals) + len(offs) - 1
    if written != n_content + n_docs:  # the lengths and the ids disagree: never leave a wrong cache behind
        raise RuntimeError(f"token stream of {folder} has {written} tokens, expected {n_content + n_docs}")
    np.save(folder / "doc_offsets.npy", doc_offsets)
    longest = int(lengths.max()) if n_docs else 0
    return {"documents": n_docs, "tokens": n_content, "unk_tokens": unk, "longest_document": longest}
