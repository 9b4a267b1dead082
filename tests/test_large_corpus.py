"""Corpora larger than memory: the token stream is written in bounded steps and the dataset pickles small."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from mlm_lightning.data import MLMDataModule, token_stream
from tests.conftest import make_corpus


def test_token_rows_pickle_without_the_corpus(corpus_file: Path, tokenizer_dir: Path) -> None:
    """Spawned dataloader workers and ddp_spawn pickle the dataset: the memory map must not be copied into it."""
    dm = MLMDataModule(train_files=[str(corpus_file)], tokenizer=str(tokenizer_dir), max_seq_length=16)
    dm.setup("fit")
    rows = dm.datasets["train"]
    blob = pickle.dumps(rows)
    assert len(blob) < rows.tokens.nbytes / 4
    again = pickle.loads(blob)
    assert len(again) == len(rows) and (again[len(rows) - 1]["input_ids"] == rows[len(rows) - 1]["input_ids"]).all()


def test_token_stream_is_written_in_many_small_steps(tmp_path: Path, tokenizer_dir: Path, monkeypatch) -> None:
    """Bounded memory means many write steps: the split's documents still come out whole and in split order."""
    monkeypatch.setattr(token_stream, "TOKENS_PER_WRITE", 50)  # a few documents per step
    docs = [f"document {i} " + d for i, d in enumerate(make_corpus(60, seed=4))]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(docs), encoding="utf-8")
    dm = MLMDataModule(
        train_files=[str(path)],
        tokenizer=str(tokenizer_dir),
        layout="line_by_line",
        max_seq_length=512,
        val_fraction=0.25,
        seed=3,
    )
    dm.setup("fit")
    assert dm.datasets["train"].tokens.dtype == np.uint16  # a 200-token vocabulary: 2 bytes per token
    perm = np.random.default_rng(3).permutation(len(docs))  # the documented split: datasets' train_test_split
    expected = {"val": perm[:15], "train": perm[15:]}
    for split, order in expected.items():
        rows = dm.datasets[split]
        got = [rows[i]["input_ids"][1:-1].tolist() for i in range(len(rows))]
        assert got == [dm.tokenizer(docs[j], add_special_tokens=False)["input_ids"] for j in order]
