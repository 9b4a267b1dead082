"""Tokenizing documents into the cache's flat token stream with memory bounded independently of corpus size.

The corpus never has to fit in memory: ``datasets`` keeps the text and the token ids in Arrow files on disk
(workers of ``datasets.map`` each tokenize a contiguous shard), and :func:`write_token_stream` copies the ids
into ``tokens.npy`` a few million tokens at a time with plain file writes. Only per-document lengths and
offsets (a few bytes per document) are held in memory. Token ids are stored as ``uint16`` when the vocabulary
allows it (4x less disk and page cache than the ``int64`` that ``datasets`` would infer).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from mlm_lightning.errors import MLMError

TOKENS_PER_WRITE = 4_000_000  # tokens gathered and written per step: bounds memory whatever the document length
LONG_DOCUMENT_CHARS = 1 << 18  # documents longer than this (characters) are tokenized in pieces, see split_text
CHARS_PER_CALL = 1 << 20  # most text handed to the tokenizer at once: its memory grows with a call's characters


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every id of a vocabulary of ``vocab_size`` tokens."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def text_only_tokenizer(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` that cannot turn any text into one of its special tokens.

    Corpus text is text: a literal ``[MASK]`` or ``</s>`` in it must not become the mask or a document boundary.
    Fast tokenizers' ``split_special_tokens`` (passed by :func:`tokenize_documents`) only stops the added-token
    matching; the model can still produce a special token from its vocabulary (a Unigram model matches the piece
    ``<mask>`` inside ``▁<mask>``, a WordPiece model without punctuation splitting the word ``[MASK]``). So in the
    copy's backend every special token's vocabulary entry is renamed to a string text cannot contain (ids, and the
    tokens of every other text, stay the same). The original tokenizer is untouched: the fill-mask probes, which
    are meant to contain ``[MASK]``, keep using it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: split_special_tokens alone, and the check in tokenize_documents
        return tokenizer
    from tokenizers import Tokenizer

    # NUL-delimited: no real text holds these (BERT's normalizer even deletes NUL); the check in
    # tokenize_documents would catch one that did.
    renamed = {token: f"\x00{token}\x00" for token in tokenizer.all_special_tokens}
    data = json.loads(backend.to_str())
    for added in data.get("added_tokens", []):
        added["content"] = renamed.get(added["content"], added["content"])
    model = data["model"]
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # WordPiece, BPE, WordLevel: token -> id
        model["vocab"] = {renamed.get(token, token): i for token, i in vocab.items()}
    elif isinstance(vocab, list):  # Unigram: [piece, score], the id is the position
        model["vocab"] = [[renamed.get(piece, piece), score] for piece, score in vocab]
    if model.get("unk_token") in renamed:  # referred to by name (the id is unchanged)
        model["unk_token"] = renamed[model["unk_token"]]
    if "merges" in model:  # BPE: no merge may build a special token (or start from one)
        pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
        model["merges"] = [p for p in pairs if not {p[0], p[1], p[0] + p[1]} & renamed.keys()]
    text_only = copy.copy(tokenizer)
    text_only._tokenizer = Tokenizer.from_str(json.dumps(data))  # the backend that the fast tokenizer calls
    return text_only


def split_text(text: str, size: int) -> Iterator[str]:
    """Cuts ``text`` into consecutive pieces of about ``size`` characters whose tokens join into the whole's.

    Each cut falls right before a single space that stands between two non-space characters. Every common
    pre-tokenizer splits there and keeps that space with what follows (WordPiece drops it, byte-level BPE makes
    it the next token's ``Ġ``, Metaspace its ``▁``, a normalizer that collapses runs of spaces sees the same runs),
    so no token crosses the cut. A stretch of text without such a space stays in one piece.
    """

    def cuttable(i: int) -> bool:
        return not text[i - 1].isspace() and i + 1 < len(text) and not text[i + 1].isspace()

    start = 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + 1, start + size + 1)  # the last one before start + size ...
        while cut != -1 and not cuttable(cut):
            cut = text.rfind(" ", start + 1, cut)
        if cut == -1:  # ... or else the first one after it
            cut = text.find(" ", start + size)
            while cut != -1 and not cuttable(cut):
                cut = text.find(" ", cut + 1)
        if cut == -1:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


def tokenize_documents(docs: Any, tokenizer: Any, num_proc: int | None) -> Any:
    """Tokenizes the ``text`` column of a ``datasets.Dataset`` into an ``input_ids`` column (no special tokens).

    The text is tokenized as text: no special token can come out of it (see :func:`text_only_tokenizer`), and
    tokenizing fails rather than store one. Memory does not grow with a document's length beyond its text and
    ids (2 bytes per token): documents longer than ``LONG_DOCUMENT_CHARS`` are tokenized in pieces
    (:func:`split_text`) whose ids join into exactly the whole document's, and the tokenizer is never given more
    than about ``CHARS_PER_CALL`` characters at once.
    """
    import datasets

    dtype = token_dtype(len(tokenizer))
    features = datasets.Features({"input_ids": datasets.List(datasets.Value(dtype.name))})
    text_only = text_only_tokenizer(tokenizer)
    # UNK is how a tokenizer spells text its vocabulary lacks; any other special id must never be stored.
    forbidden = frozenset(tokenizer.all_special_ids) - {tokenizer.unk_token_id}

    def encode(texts: list[str]) -> list[list[int]]:
        ids = text_only(
            texts,
            add_special_tokens=False,
            split_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        found = forbidden.intersection(chain.from_iterable(ids))
        if found:
            names = tokenizer.convert_ids_to_tokens(sorted(found))
            raise MLMError(f"the tokenizer turned corpus text into its special token(s) {names}; use another tokenizer")
        return ids

    def tokenize(batch: dict[str, list[str]]) -> dict[str, Any]:
        texts = batch["text"]
        lengths = [len(t) for t in texts]
        if sum(lengths) <= CHARS_PER_CALL and max(lengths, default=0) <= LONG_DOCUMENT_CHARS:  # usual: one call
            return {"input_ids": encode(texts)}
        # Long text: ids as arrays (2 bytes per token rather than ~36 for a list of Python ints).
        out: list[np.ndarray] = []
        group: list[str] = []
        group_chars = 0
        for text in [*texts, None]:  # None: the end, flushes the last group
            if group and (text is None or len(text) > LONG_DOCUMENT_CHARS or group_chars + len(text) > CHARS_PER_CALL):
                out.extend(np.asarray(ids, dtype=dtype) for ids in encode(group))
                group, group_chars = [], 0
            if text is None:
                break
            if len(text) > LONG_DOCUMENT_CHARS:
                pieces = split_text(text, LONG_DOCUMENT_CHARS)
                out.append(np.concatenate([np.asarray(encode([p])[0], dtype=dtype) for p in pieces]))
            else:
                group.append(text)
                group_chars += len(text)
        return {"input_ids": out}

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
