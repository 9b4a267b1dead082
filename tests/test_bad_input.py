"""Bad input through the real command line: one readable line on stderr, exit status 2, nothing written.

The data module's own checks are unit-tested in test_data.py; here each case runs ``main(["fit", ...])``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.errors import MLMError
from tests.conftest import make_corpus


def set_arg(args: list[str], key: str, value: str) -> list[str]:
    args = list(args)
    if key in args:
        args[args.index(key) + 1] = value
    else:
        args += [key, value]
    return args


def make_inputs(folder: Path) -> None:
    docs = make_corpus(30)
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.txt").write_text("  \n\n \t\n", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("\n".join(docs).encode() + "\ncaf\u00e9\n".encode("latin-1"))
    (folder / "latin1.jsonl").write_bytes(json.dumps({"text": docs[0]}).encode() + b'\n{"text": "caf\xe9"}\n')
    (folder / "body.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs), encoding="utf-8")
    (folder / "content.csv").write_text("id,content\n" + "\n".join(f"{i},{d}" for i, d in enumerate(docs)))
    (folder / "a_file").write_text("not a folder")
    (folder / "a.txt").write_text("a\n", encoding="utf-8")  # validation sets with nothing to score
    (folder / "dot.txt").write_text(".\n", encoding="utf-8")
    (folder / "bom.txt").write_bytes(b"\xef\xbb\xbf\n\n\n")
    checkpoint = folder / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, checkpoint)
    (folder / "truncated.ckpt").write_bytes(checkpoint.read_bytes()[:2000])


def small_pretrained_model(folder: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertForMaskedLM(config).save_pretrained(folder / "model100")
    return folder / "model100"


CASES = {
    "missing file": ({"--data.train_files": "[{d}/nope.txt]"}, "nope.txt: no such file"),
    "empty glob": ({"--data.train_files": "[{d}/*.nothing]"}, "the pattern matches no files"),
    "empty file": ({"--data.train_files": "[{d}/empty.txt]"}, "empty.txt: file is empty"),
    "whitespace only": ({"--data.train_files": "[{d}/blank.txt]"}, "(empty or whitespace only)"),
    "not utf-8": ({"--data.train_files": "[{d}/latin1.txt]"}, "is not valid UTF-8. Convert the file to UTF-8, or set"),
    "not utf-8 jsonl": (
        {"--data.train_files": "[{d}/latin1.jsonl]", "--data.encoding_errors": "replace"},
        "covers .txt files only",
    ),
    "jsonl column": ({"--data.train_files": "[{d}/body.jsonl]"}, "no column 'text' (columns: body)"),
    "csv column": (
        {"--data.train_files": "[{d}/content.csv]", "--data.text_column": "body"},
        "no column 'body' (columns: id, content)",
    ),
    "validation of 'a'": ({"--data.val_files": "[{d}/a.txt]"}, "a.txt: the val set cannot be scored"),
    "validation of '.'": ({"--data.val_files": "[{d}/dot.txt]"}, "dot.txt: the val set cannot be scored"),
    "validation of a BOM": (
        {"--data.val_files": '{{"general": ["{d}/bom.txt"]}}'},
        "bom.txt: the val/general set cannot be scored",
    ),
    "max_seq_length": ({"--data.max_seq_length": "128"}, "position embeddings for only 64 tokens"),
    "tokenizer too big": ({"--model.model_name_or_path": "{d}/model100"}, "has embeddings for only 100"),
    "hub model offline": (
        {"--model.model_name_or_path": "bert-base-uncased"},
        "could not load model 'bert-base-uncased'",
    ),
    "hub tokenizer offline": (
        {"--data.tokenizer": "bert-base-uncased"},
        "could not load tokenizer 'bert-base-uncased'",
    ),
    "unwritable output": ({"--trainer.default_root_dir": "{d}/a_file/run"}, "cannot write to"),
    "missing checkpoint": ({"--ckpt_path": "{d}/nope.ckpt"}, "nope.ckpt: no such checkpoint file"),
    "truncated checkpoint": ({"--ckpt_path": "{d}/truncated.ckpt"}, "truncated.ckpt: not a complete checkpoint"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    make_inputs(folder)
    small_pretrained_model(folder)
    return folder


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: str, tiny_args: list[str], inputs: Path, tmp_path: Path, capsys
) -> None:
    overrides, message = CASES[case]
    args = list(tiny_args)
    for key, value in overrides.items():
        args = set_arg(args, key, value.format(d=inputs))
    root = Path(args[args.index("--trainer.default_root_dir") + 1])
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    if "offline" in case:
        assert "local folder" in errors[0]  # and says what works without network
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]
    corpora = Path(os.environ["MLM_LIGHTNING_CACHE"]) / "corpora"
    assert all((entry / "meta.json").is_file() for entry in corpora.glob("*")) if corpora.exists() else True


def test_config_typo_and_wrong_type_are_one_line(tiny_args: list[str], tmp_path: Path, capsys) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  batchsize: 4\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", *tiny_args, "--config", str(typo)])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "data.batchsize" in lines[-1] and "--help" in lines[-1]
    assert not [line for line in lines if line.startswith("usage:")]
    with pytest.raises(SystemExit) as info:
        main(["fit", *set_arg(tiny_args, "--data.batch_size", "four")])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: data.batch_size must be an integer > 0, got four")


def test_debug_setting_shows_the_traceback(tiny_args: list[str], monkeypatch) -> None:
    monkeypatch.setenv("MLM_LIGHTNING_DEBUG", "1")
    with pytest.raises(MLMError, match="no such file"):
        main(["fit", *set_arg(tiny_args, "--data.train_files", "[/no/such/file.txt]")])
