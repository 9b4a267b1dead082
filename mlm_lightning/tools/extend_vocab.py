"""``python -m mlm_lightning extend-vocab``: whole-word tokens for the domain words the tokenizer shreds.

A word's cost is how many pieces the tokenizer cuts it into. Adding a word as one token saves
``pieces - 1`` tokens at each occurrence it replaces, so its score is ``frequency * (pieces - 1)``: the tokens
it saves over the corpus. Added whole-word tokens do not interact (each replaces only its own word), so the
top ``num_tokens`` by score are the set that saves the most tokens.

Words are what the tokenizer itself sees: its normalizer (lowercasing, accent stripping) then its
pre-tokenizer. Each new embedding (and output-bias entry, and untied output-embedding row) starts as the mean
of its old pieces', so the extended model predicts as before until training moves them. The result is a model
folder that ``fit`` takes as ``model.model_name_or_path``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlm_lightning.data.tokenizer import tokenizer_family
from mlm_lightning.errors import MLMError
from mlm_lightning.io.atomic import atomic_output_dir, check_writable
from mlm_lightning.io.sources import resolve_files
from mlm_lightning.quiet import no_transformers_progress


@dataclass(frozen=True)
class WordRule:
    """How one tokenizer family matches an added whole-word token.

    Attributes:
        added_token: The ``tokenizers.AddedToken`` for a word, in the normalizer's output form.
        glue_chars: Characters the pre-tokenizer splits off as words of their own but that ``tokenizers``
            counts as word characters (``\\w``) when it matches a ``single_word`` added token: an occurrence
            next to one (``cawdor_x``) keeps its old pieces, so it does not count towards the word's frequency.
    """

    added_token: Callable[[str], Any]
    glue_chars: str


# Unicode connector punctuation (category Pc): BERT's pre-tokenizer splits at it (it is punctuation), Rust's \w
# includes it. Whitespace, other punctuation and CJK (padded with spaces by the normalizer) never glue.
CONNECTOR_PUNCTUATION = "_\u203f\u2040\u2054\ufe33\ufe34\ufe4d\ufe4e\ufe4f\uff3f"


def _whole_word(word: str) -> Any:
    from tokenizers import AddedToken

    # single_word: "macbeth" must not match inside "macbethian" (which would then lose its "##" pieces);
    # normalized: matched on the lowercased, accent-stripped text, so "Macbeth" and "MACBETH" match too.
    return AddedToken(word, single_word=True, normalized=True, special=False)


# Tokenizer family (:func:`tokenizer_family`) -> rule; ``None``: not supported yet. Those families mark a word
# start inside the token itself (byte-level BPE's "Ġ", SentencePiece's "▁"), so their rule needs its own entry.
WORD_RULES: dict[str, WordRule | None] = {
    "WordPiece": WordRule(added_token=_whole_word, glue_chars=CONNECTOR_PUNCTUATION),
    "byte-level BPE": None,
    "SentencePiece": None,
}


def word_rule(tokenizer: Any, name: str) -> WordRule:
    """The rule for ``tokenizer``'s family, or a one-line error naming the family."""
    family = tokenizer_family(tokenizer)
    rule = WORD_RULES.get(family)
    if rule is None:
        raise MLMError(
            f"extend-vocab supports WordPiece tokenizers (BERT family) for now; '{name}' has a {family} tokenizer"
        )
    return rule


@dataclass
class CorpusCounts:
    """What one pass over the corpus found.

    Attributes:
        documents: Non-blank documents read.
        words: Words (pre-tokenizer outputs: punctuation marks count as words), all occurrences.
        tokens: Tokens of the corpus without special tokens (documents tokenized one by one).
        whole: Per word, the occurrences an added whole-word token would replace.
    """

    documents: int = 0
    words: int = 0
    tokens: int = 0
    whole: Counter = field(default_factory=Counter)


def plain_backend(tokenizer: Any) -> Any:
    """A copy of the ``tokenizers`` backend without the padding or truncation some saved tokenizers switch on."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def _batches(docs: Any, size: int = 1000) -> Iterator[list[str]]:
    for start in range(0, len(docs), size):
        yield docs[start : start + size]["text"]


def count_corpus(docs: Any, tokenizer: Any, rule: WordRule | None, count_words: bool = True) -> CorpusCounts:
    """Tokens of ``docs`` (a ``datasets.Dataset`` with a ``text`` column) and, with ``count_words``, its words."""
    backend = plain_backend(tokenizer)
    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    counts = CorpusCounts()
    for texts in _batches(docs):
        counts.documents += len(texts)
        counts.tokens += sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))
        if not count_words:
            continue
        assert rule is not None  # words are counted with the family's rule (callers pass word_rule's)
        glue = rule.glue_chars
        for text in texts:
            norm = normalizer.normalize_str(text) if normalizer is not None else text
            words = pre_tokenizer.pre_tokenize_str(norm) if pre_tokenizer is not None else [(norm, (0, len(norm)))]
            counts.words += len(words)
            if not any(ch in norm for ch in glue):  # the common case: every occurrence stands alone
                counts.whole.update(word for word, _ in words)
                continue
            # Offsets are characters of the normalized text, where the added token is matched.
            counts.whole.update(
                word
                for word, (start, end) in words
                if (start == 0 or norm[start - 1] not in glue) and (end == len(norm) or norm[end] not in glue)
            )
    return counts


@dataclass
class Candidate:
    """A word to add: how often it occurs whole, its old pieces, and the tokens it saves."""

    word: str
    frequency: int
    pieces: list[str]
    piece_ids: list[int]

    @property
    def tokens_saved(self) -> int:
        return self.frequency * (len(self.pieces) - 1)


def choose_words(
    whole: Counter, tokenizer: Any, num_tokens: int, min_frequency: int, include_numbers: bool
) -> list[Candidate]:
    """The ``num_tokens`` words with the highest ``frequency * (pieces - 1)``.

    Ties go to the more frequent word, then alphabetical order. Words below ``min_frequency``, words of one
    piece (already a token), words with an unknown piece, and (unless ``include_numbers``) words without a
    letter are never chosen.
    """
    backend = plain_backend(tokenizer)
    words = [w for w, n in whole.items() if n >= min_frequency and (include_numbers or any(c.isalpha() for c in w))]
    candidates = []
    for start in range(0, len(words), 10_000):
        chunk = words[start : start + 10_000]
        for word, enc in zip(chunk, backend.encode_batch(chunk, add_special_tokens=False)):
            if len(enc.ids) > 1 and tokenizer.unk_token_id not in enc.ids:
                candidates.append(Candidate(word, whole[word], list(enc.tokens), list(enc.ids)))
    candidates.sort(key=lambda c: (-c.tokens_saved, -c.frequency, c.word))
    return candidates[:num_tokens]


def init_new_rows(model: Any, new_ids: list[int], piece_ids: list[list[int]]) -> None:
    """Sets each new token's input embedding, untied output embedding and output bias to its pieces' mean."""
    import torch

    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tensors = [inp]
    if out is not None and out.weight.data_ptr() != inp.data_ptr():  # tied: already written through inp
        tensors.append(out.weight)
    if out is not None and getattr(out, "bias", None) is not None:
        tensors.append(out.bias)
    with torch.no_grad():
        for tensor in tensors:
            for new_id, pieces in zip(new_ids, piece_ids):
                tensor[new_id] = tensor[torch.tensor(pieces)].mean(0)


def format_table(added: list[dict[str, Any]], corpus: dict[str, Any]) -> str:
    """A Markdown table of the added words, then the corpus's tokens per word before and after."""
    lines = [
        "| # | word | frequency | old pieces | tokens saved |",
        "| ---: | --- | ---: | --- | ---: |",
        *(
            f"| {i} | {a['word']} | {a['frequency']:,} | {' '.join(a['pieces'])} | {a['tokens_saved']:,} |"
            for i, a in enumerate(added, 1)
        ),
        "",
        "| corpus | before | after |",
        "| --- | ---: | ---: |",
        f"| words | {corpus['words']:,} | {corpus['words']:,} |",
        f"| tokens | {corpus['tokens_before']:,} | {corpus['tokens_after']:,} |",
        f"| tokens per word | {corpus['tokens_per_word_before']:.4f} | {corpus['tokens_per_word_after']:.4f} |",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # an encoder-only checkpoint's missing MLM head is expected
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def extend_vocab(
    model: str,
    files: list[str],
    num_tokens: int,
    output_dir: str,
    min_frequency: int = 5,
    include_numbers: bool = False,
    text_column: str = "text",
    tokenizer: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Adds the domain words the tokenizer splits the most as whole tokens, and writes the extended model.

    Each word's score is frequency x (pieces - 1), the tokens it saves over the corpus; the top ``num_tokens``
    become new tokens whose embeddings start as the mean of their old pieces'. Prints and saves
    (``extend_vocab.json``, ``extend_vocab.md``) the added words and the corpus's tokens per word before and
    after. WordPiece tokenizers only, for now.

    Args:
        model: The masked LM to extend: a local folder, an ``export`` output, a ``.ckpt`` written by ``fit``,
            ``pkg://package/path``, or a hub name (needs network).
        files: Domain text: paths, globs, folders, ``pkg://`` package data or URLs of ``.txt``, ``.jsonl``,
            ``.csv`` or ``.parquet`` files (as ``data.train_files``).
        num_tokens: Words to add at most (fewer if fewer words qualify).
        output_dir: Folder to create (model, tokenizer, tables); ``fit`` takes it as ``model.model_name_or_path``.
        min_frequency: Words seen (whole) fewer times than this are not added.
        include_numbers: Also add words without a letter (numbers); a token per number rarely generalises.
        text_column: The text column of ``.jsonl``, ``.csv`` and ``.parquet`` files.
        tokenizer: Tokenizer to extend instead of the model's own.
        overwrite: Replace ``output_dir`` if it exists (otherwise that is an error).
    """
    from mlm_lightning.data.reading import load_documents
    from mlm_lightning.tools.fill_mask import load_model

    if num_tokens < 1:
        raise MLMError(f"num_tokens must be at least 1, got {num_tokens}")
    if min_frequency < 1:
        raise MLMError(f"min_frequency must be at least 1, got {min_frequency}")
    target = check_writable(output_dir, overwrite)
    paths = resolve_files(files)
    with _quiet_transformers():
        mlm, tok = load_model(model, tokenizer)
    rule = word_rule(tok, tokenizer or model)
    old_size = len(tok)
    if mlm.get_input_embeddings().weight.shape[0] < old_size:
        raise MLMError(
            f"the tokenizer has {old_size} tokens but model '{model}' has embeddings for only "
            f"{mlm.get_input_embeddings().weight.shape[0]}: use the model's own tokenizer"
        )

    with tempfile.TemporaryDirectory(prefix="mlm-extend-vocab-") as scratch:
        docs = load_documents(paths, "line", text_column, "strict", Path(scratch))
        if len(docs) == 0:
            raise MLMError(f"no text in {', '.join(map(str, paths))}")
        before = count_corpus(docs, tok, rule)
        chosen = choose_words(before.whole, tok, num_tokens, min_frequency, include_numbers)
        if not chosen:
            raise MLMError(
                f"no word of the corpus is split into several pieces and seen whole at least {min_frequency} "
                f"times (min_frequency): nothing to add"
            )
        tok.add_tokens([rule.added_token(c.word) for c in chosen])
        new_ids = tok.convert_tokens_to_ids([c.word for c in chosen])
        for c, new_id in zip(chosen, new_ids):
            got = tok(c.word, add_special_tokens=False)["input_ids"]
            if got != [new_id] or new_id < old_size:  # a tokenizer whose added tokens do not behave as expected
                raise MLMError(f"'{c.word}' does not tokenize to its new token (got {got}): not written")
        after = count_corpus(docs, tok, rule, count_words=False)

    mlm.resize_token_embeddings(len(tok), mean_resizing=False)
    init_new_rows(mlm, new_ids, [c.piece_ids for c in chosen])
    added = [
        {
            "word": c.word,
            "id": new_id,
            "frequency": c.frequency,
            "pieces": c.pieces,
            "piece_ids": c.piece_ids,
            "tokens_saved": c.tokens_saved,
        }
        for c, new_id in zip(chosen, new_ids)
    ]
    words = max(before.words, 1)
    corpus = {
        "files": [str(p) for p in paths],
        "documents": before.documents,
        "words": before.words,
        "tokens_before": before.tokens,
        "tokens_after": after.tokens,
        "tokens_per_word_before": before.tokens / words,
        "tokens_per_word_after": after.tokens / words,
    }
    report = {
        "model": model,
        "tokenizer": tokenizer or model,
        "tokenizer_family": tokenizer_family(tok),
        "vocab_size_before": old_size,
        "vocab_size_after": len(tok),
        "num_tokens": num_tokens,
        "min_frequency": min_frequency,
        "include_numbers": include_numbers,
        "score": "frequency * (pieces - 1): tokens saved over the corpus",
        "added": added,
        "corpus": corpus,
    }
    table = format_table(added, corpus)
    with atomic_output_dir(target, overwrite) as work:
        with no_transformers_progress():
            mlm.save_pretrained(work, safe_serialization=True)
        tok.save_pretrained(work)
        (work / "extend_vocab.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
        (work / "extend_vocab.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    predicted = before.tokens - sum(a["tokens_saved"] for a in added)
    if after.tokens != predicted:  # e.g. a special token written into the text, glued to a new word
        print(f"note: the corpus has {after.tokens:,} tokens after, the table predicts {predicted:,}")
    print(
        f"added {len(added)} of {num_tokens} requested tokens ({old_size:,} -> {len(tok):,}); "
        f"wrote {target} (fit: --model.model_name_or_path {target})"
    )
    return report
