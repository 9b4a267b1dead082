"""``python -m mlm_lightning train-tokenizer``: a WordPiece tokenizer for your own corpus.

Trained with the ``tokenizers`` library (BERT's normalisation, pre-tokenization, ``[CLS] ... [SEP]``
template) and saved as a ``transformers`` BERT tokenizer, so ``data.tokenizer`` accepts the folder and a
from-scratch model (``model.model_name_or_path: null``) takes its vocabulary size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlm_lightning.atomic import atomic_output_dir, check_writable
from mlm_lightning.errors import MLMError
from mlm_lightning.sources import resolve_files

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] first: id 0, a new model's pad_token_id


def train_tokenizer(
    files: list[str],
    output_dir: str,
    vocab_size: int = 30522,
    lowercase: bool = True,
    min_frequency: int = 2,
    text_column: str = "text",
    model_max_length: int = 512,
    overwrite: bool = False,
) -> Path:
    """Trains a WordPiece tokenizer on text files and saves it with ``save_pretrained``.

    Args:
        files: Paths, globs, folders, ``pkg://`` package data or URLs of ``.txt``, ``.jsonl``, ``.csv`` or
            ``.parquet`` files (as ``data.train_files``).
        output_dir: Folder to create; set ``data.tokenizer`` to it.
        vocab_size: Largest vocabulary, special tokens included (a small corpus may give fewer).
        lowercase: Lowercase (and strip accents from) the text, as ``bert-base-uncased`` does.
        min_frequency: Pieces seen fewer times than this are not added.
        text_column: The text column of ``.jsonl``, ``.csv`` and ``.parquet`` files.
        model_max_length: Longest input the tokenizer announces (pipelines truncate to it).
        overwrite: Replace ``output_dir`` if it exists (otherwise that is an error).
    """
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    from mlm_lightning.data.reading import load_documents

    if vocab_size <= len(SPECIAL_TOKENS):
        raise MLMError(f"vocab_size must be larger than the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    target = check_writable(output_dir, overwrite)
    paths = resolve_files(files)
    with tempfile.TemporaryDirectory(prefix="mlm-tokenizer-") as scratch:
        docs = load_documents(paths, "line", text_column, "strict", Path(scratch))
        if len(docs) == 0:
            raise MLMError(f"no text in {', '.join(map(str, paths))}")

        def batches(size: int = 1000) -> Iterator[list[str]]:
            for start in range(0, len(docs), size):
                yield docs[start : start + size]["text"]

        # lowercase=False keeps accents as well, like bert-base-cased.
        wordpiece = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=None if lowercase else False)
        wordpiece.train_from_iterator(
            batches(),
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            length=len(docs),
        )
        sample = docs[0]["text"]
        wordpiece.save(str(Path(scratch) / "tokenizer.json"))
        tok = BertTokenizerFast(
            tokenizer_file=str(Path(scratch) / "tokenizer.json"),
            do_lower_case=lowercase,
            model_max_length=model_max_length,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    with atomic_output_dir(target, overwrite) as work:
        tok.save_pretrained(work)
    print(f"trained a WordPiece tokenizer of {len(tok)} tokens on {len(docs):,} lines ({len(paths)} files): {target}")
    print(f"example: {sample[:60]!r} -> {tok.tokenize(sample)[:12]}")
    return target
