from __future__ import annotations

from pathlib import Path

import torch

from mlm_lightning.__main__ import main


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
