from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.data.tokenizer import tokenizer_family


def test_trained_tokenizer_drives_a_from_scratch_fit(
    corpus_file: Path, tiny_args: list[str], tmp_path: Path, capsys
) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    extra = tmp_path / "extra.txt"
    extra.write_text("The Castle of the KING.\n", encoding="utf-8")
    args = ["train-tokenizer", "--files", str(corpus_file), str(extra), "--vocab_size", "300", "--output_dir", str(out)]
    assert main(args) == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) <= 300 and tok.pad_token_id == 0
    assert tok.mask_token == "[MASK]" and tok.unk_token == "[UNK]"
    assert tok.tokenize("The Castle of the KING.") == ["the", "castle", "of", "the", "king", "."]  # lowercase
    assert tok("the king")["input_ids"][0] == tok.cls_token_id and tok("the king")["input_ids"][-1] == tok.sep_token_id

    assert main(args) == 2  # exists: not overwritten unless asked
    assert "already exists" in capsys.readouterr().err

    steps = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4"]
    assert main(["fit", *tiny_args, "--data.tokenizer", str(out), *steps]) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["vocab_size"] == len(tok)
    assert ckpt["state_dict"]["model.bert.embeddings.word_embeddings.weight"].shape[0] == len(tok)


def test_cased_tokenizer_keeps_case(corpus_file: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "cased"
    args = ["--files", str(corpus_file), "--vocab_size", "300", "--lowercase", "false", "--output_dir", str(out)]
    assert main(["train-tokenizer", *args]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.tokenize("king") == ["king"] and tok.tokenize("KING") != ["king"]


def test_train_tokenizer_rejects_bad_input(tmp_path: Path, corpus_file: Path, capsys) -> None:
    base = ["train-tokenizer", "--output_dir", str(tmp_path / "t")]
    assert main([*base, "--files", str(corpus_file), "--vocab_size", "4"]) == 2
    assert "vocab_size must be larger" in capsys.readouterr().err
    assert main([*base, "--files", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


# Per family: class AutoTokenizer builds, first/last token of an input, ids of pad/unk/mask, piece marking a word.
FAMILY_EXPECTED = {
    "bert": ("BertTokenizer", "[CLS]", "[SEP]", {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}),
    "distilbert": ("DistilBertTokenizer", "[CLS]", "[SEP]", {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}),
    "electra": ("BertTokenizer", "[CLS]", "[SEP]", {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}),
    "roberta": ("RobertaTokenizer", "<s>", "</s>", {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}),
    "modernbert": ("TokenizersBackend", "[CLS]", "[SEP]", {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}),
    "xlm-roberta": ("XLMRobertaTokenizer", "<s>", "</s>", {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}),
    "deberta-v2": ("DebertaV2Tokenizer", "[CLS]", "[SEP]", {"pad": 0, "cls": 1, "sep": 2, "unk": 3, "mask": 4}),
}


@pytest.mark.parametrize("family", list(FAMILY_EXPECTED))
def test_each_family_trains_its_own_tokenizer(family: str, corpus_file: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from mlm_lightning.tools.train_tokenizer import RECIPES

    out = tmp_path / family
    # 600: room for the 256 bytes of byte-level BPE and whole words of the corpus.
    args = ["--files", str(corpus_file), "--vocab_size", "600", "--family", family, "--output_dir", str(out)]
    assert main(["train-tokenizer", *args]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    cls_name, first, last, ids = FAMILY_EXPECTED[family]
    assert type(tok).__name__ == cls_name and 100 < len(tok) <= 600
    assert {role: tok.convert_tokens_to_ids(getattr(tok, f"{role}_token")) for role in ids} == ids
    assert tok.model_max_length == 512
    kind = RECIPES[family].kind
    assert tokenizer_family(tok) == kind
    text = "the king and the queen."  # the generated corpus is lowercase: every character is in each vocabulary
    enc = tok(text)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    assert pieces[0] == first and pieces[-1] == last and first not in pieces[1:-1]  # the post-processor
    # Each kind's pieces: WordPiece's words, byte-level BPE marks a space with Ġ, Metaspace with ▁.
    word_pieces = {"WordPiece": "king", "byte-level BPE": "Ġking", "SentencePiece": "▁king"}[kind]
    assert word_pieces in pieces, pieces
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text
    # The mask is one token, never split by the text around it (BPE/Unigram: it takes the space before it).
    masked = tok.convert_ids_to_tokens(tok(f"the {tok.mask_token}.", add_special_tokens=False)["input_ids"])
    at = masked.index(tok.mask_token)
    assert masked.count(tok.mask_token) == 1 and masked[at - 1].strip("Ġ▁") == "the", masked
    # DistilBERT, RoBERTa, ... take no token_type_ids: their tokenizers must not produce them (fill-mask passes
    # everything the tokenizer returns to the model).
    assert ("token_type_ids" in enc) == (family in ("bert", "electra", "deberta-v2"))


def test_train_tokenizer_rejects_a_setting_the_family_cannot_keep(corpus_file: Path, tmp_path: Path, capsys) -> None:
    base = ["train-tokenizer", "--files", str(corpus_file), "--output_dir", str(tmp_path / "t"), "--vocab_size", "300"]
    assert main([*base, "--family", "roberta", "--lowercase", "true"]) == 2
    assert "the roberta tokenizer (RobertaTokenizer) does not lowercase" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the parser names the choices
        main([*base, "--family", "gpt2"])
    assert exit_.value.code == 2 and "xlm-roberta" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_family_choices_are_the_table() -> None:
    from typing import get_args

    from mlm_lightning.tools.train_tokenizer import RECIPES, TokenizerFamily

    assert set(get_args(TokenizerFamily)) == set(RECIPES)


def test_train_tokenizer_prints_its_two_lines_and_no_blank_ones(tmp_path: Path, corpus_file: Path, capfd) -> None:
    # tokenizers' progress bar wrote three blank lines to standard output when it is not a terminal (a log).
    args = ["--files", str(corpus_file), "--vocab_size", "300", "--output_dir", str(tmp_path / "t")]
    assert main(["train-tokenizer", *args]) == 0
    out = capfd.readouterr().out
    assert out.startswith("trained a WordPiece tokenizer") and len(out.splitlines()) == 2, repr(out)
