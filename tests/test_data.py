from __future__ import annotations

import csv
import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mlm_lightning.data import MLMDataModule
from mlm_lightning.data import cache as cache_mod
from mlm_lightning.errors import MLMError
from tests.conftest import make_corpus


def dm_for(files, tokenizer_dir: Path, **kw) -> MLMDataModule:
    dm = MLMDataModule(train_files=[str(f) for f in files], tokenizer=str(tokenizer_dir), **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def all_tokens(dm: MLMDataModule, docs: list[str]) -> list[int]:
    return [t for d in docs for t in dm.tokenizer(d, add_special_tokens=False)["input_ids"]]


def test_packing_keeps_every_token(tmp_path: Path, tokenizer_dir: Path) -> None:
    docs = make_corpus(120, seed=5)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(docs), encoding="utf-8")
    dm = dm_for([path], tokenizer_dir, val_files=[str(path)], max_seq_length=32)
    rows = dm.datasets["train"]
    tok = dm.tokenizer
    blocks = [rows[i]["input_ids"] for i in range(len(rows))]
    assert all(b[0] == tok.cls_token_id for b in blocks)
    assert all(len(b) == 32 for b in blocks[:-1]) and 1 < len(blocks[-1]) <= 32
    stream = np.concatenate([b[1:] for b in blocks]).tolist()
    # Every document's tokens, each followed by [SEP], in order, nothing dropped.
    expected = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]]
    assert stream == expected
    assert dm.corpus_meta("train")["tokens"] == len(all_tokens(dm, docs))
    assert (rows.row_lengths() == np.array([len(b) for b in blocks])).all()


def test_line_by_line_windows_cover_long_documents(tmp_path: Path, tokenizer_dir: Path) -> None:
    docs = make_corpus(30, seed=2, min_words=5, max_words=20) + make_corpus(5, seed=3, min_words=150, max_words=200)
    path = tmp_path / "c.txt"
    path.write_text("\n".join(docs), encoding="utf-8")
    dm = dm_for([path], tokenizer_dir, val_files=[str(path)], layout="line_by_line", max_seq_length=24)
    rows = dm.datasets["train"]
    tok = dm.tokenizer
    got = [rows[i]["input_ids"] for i in range(len(rows))]
    assert all(r[0] == tok.cls_token_id and r[-1] == tok.sep_token_id and len(r) <= 24 for r in got)
    long_docs = sum(len(tok(d, add_special_tokens=False)["input_ids"]) > 22 for d in docs)
    assert rows.windowed_documents == long_docs >= 5
    assert np.concatenate([r[1:-1] for r in got]).tolist() == all_tokens(dm, docs)
    batch = next(iter(dm.train_dataloader()))
    longest = int(batch["attention_mask"].sum(1).max()) if "attention_mask" in batch else batch["input_ids"].shape[1]
    assert batch["input_ids"].shape[1] == longest  # padded only to the batch's own longest row


def test_cache_is_reused_and_keyed_by_content(tmp_path: Path, tokenizer_dir: Path, monkeypatch) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n".join(make_corpus(50)), encoding="utf-8")
    calls = []
    real = cache_mod.load_documents
    monkeypatch.setattr(cache_mod, "load_documents", lambda *a, **k: calls.append(1) or real(*a, **k))
    dm_for([path], tokenizer_dir)
    dm_for([path], tokenizer_dir, layout="line_by_line", max_seq_length=16, batch_size=3)  # views only: no re-tokenize
    assert len(calls) == 1
    path.write_text("\n".join(make_corpus(50, seed=9)), encoding="utf-8")
    dm_for([path], tokenizer_dir)
    assert len(calls) == 2
    dm_for([path], tokenizer_dir, val_fraction=0.2)  # another split is another cache entry
    assert len(calls) == 3


def test_validation_split_is_seeded_and_disjoint(tmp_path: Path, tokenizer_dir: Path) -> None:
    docs = [f"document number {i} " + d for i, d in enumerate(make_corpus(100))]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(docs), encoding="utf-8")
    a = dm_for([path], tokenizer_dir, val_fraction=0.2, layout="line_by_line", max_seq_length=512)
    b = dm_for(
        [path],
        tokenizer_dir,
        val_fraction=0.2,
        layout="line_by_line",
        max_seq_length=512,
        cache_dir=str(tmp_path / "other"),
    )
    assert len(a.datasets["val"]) == 20 and len(a.datasets["train"]) == 80
    val_a = {tuple(a.datasets["val"][i]["input_ids"]) for i in range(20)}
    val_b = {tuple(b.datasets["val"][i]["input_ids"]) for i in range(20)}
    train = {tuple(a.datasets["train"][i]["input_ids"]) for i in range(80)}
    assert val_a == val_b and not (val_a & train)


def test_validation_masks_fixed_training_masks_redrawn(corpus_file: Path, tokenizer_dir: Path) -> None:
    dm = dm_for([corpus_file], tokenizer_dir, max_seq_length=32, batch_size=8)
    first = [b["labels"] for b in dm.val_dataloader()]
    again = [b["labels"] for b in dm.val_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    e0 = next(iter(loader))
    loader.sampler.set_epoch(1)
    e1 = next(iter(loader))
    assert not torch.equal(e0["input_ids"], e1["input_ids"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_structured_formats_with_text_column(tmp_path: Path, tokenizer_dir: Path, fmt: str) -> None:
    docs = make_corpus(40)
    path = tmp_path / f"c.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)), encoding="utf-8")
    elif fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "body"])
            w.writerows(enumerate(docs))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(len(docs))), "body": docs}), path)
    dm = dm_for([path], tokenizer_dir, val_files=[str(path)], text_column="body")
    assert dm.corpus_meta("train")["documents"] == 40
    assert dm.corpus_meta("train")["tokens"] == len(all_tokens(dm, docs))
    with pytest.raises(MLMError, match="no column 'text'"):
        dm_for([path], tokenizer_dir, cache_dir=str(tmp_path / "c2"))


def test_paragraph_layout_and_folder_input(tmp_path: Path, tokenizer_dir: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("first line\nstill first\n\nsecond para\n\n\nthird\n", encoding="utf-8")
    (folder / "b.txt").write_text("fourth\n", encoding="utf-8")
    dm = dm_for([folder], tokenizer_dir, val_files=[str(folder)], text_layout="paragraph")
    assert dm.corpus_meta("train")["documents"] == 4


def test_url_is_downloaded_once(tmp_path: Path, tokenizer_dir: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "clean.txt").write_text("\n".join(make_corpus(60)), encoding="utf-8")
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clean.txt"
        dm = dm_for([url], tokenizer_dir)
        assert dm.corpus_meta("train")["documents"] + dm.corpus_meta("val")["documents"] == 60
        dm_for([url], tokenizer_dir)
        assert len(hits) == 1
        with pytest.raises(MLMError, match="could not download"):
            dm_for([url.replace("clean", "missing")], tokenizer_dir)
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope.txt", "no such file"),
        ("*.nothing", "matches no files"),
        ("empty.txt", "file is empty"),
        ("blank.txt", "no text"),
        ("latin1.txt", "not valid UTF-8"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, tokenizer_dir: Path, monkeypatch, spec: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\n \t\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(MLMError, match=message):
        dm_for([spec], tokenizer_dir)


def test_non_utf8_can_be_replaced(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("\n".join(make_corpus(20)).encode() + "\ncaf\u00e9 na\u00efve\n".encode("latin-1"))
    with pytest.warns(UserWarning, match="2 bytes are not valid UTF-8"):
        dm = dm_for([path], tokenizer_dir, encoding_errors="replace")
    assert dm.corpus_meta("train")["documents"] + dm.corpus_meta("val")["documents"] == 21
    assert dm.replaced_bytes == {str(path.resolve()): 2}


def test_masking_strategy_from_python_and_from_a_config(tmp_path: Path, tokenizer_dir: Path) -> None:
    """``data.masking`` is an object from Python and a mapping in configs; checkpoints record plain data either way."""
    from mlm_lightning.data.masking import TokenMasking

    kw = {"train_files": ["x.txt"], "tokenizer": str(tokenizer_dir), "cache_dir": str(tmp_path)}
    given = MLMDataModule(masking=TokenMasking(mlm_probability=0.3), **kw)
    assert given.hparams["masking"] == {
        "class_path": "mlm_lightning.data.masking.TokenMasking",
        "init_args": {
            "mlm_probability": 0.3,
            "mask_replace_prob": 0.8,
            "random_replace_prob": 0.1,
            "whole_word_mask": False,
            "start_probability": None,
            "schedule_steps": 0,
        },
    }
    assert torch.load(_saved(given.hparams, tmp_path), weights_only=True)  # what Lightning writes into checkpoints
    for config in (given.hparams["masking"], {"mlm_probability": 0.3}):  # a saved config, or the settings alone
        built = MLMDataModule(masking=config, **kw)
        assert type(built.masking) is TokenMasking and built.masking.mlm_probability == 0.3
        assert built.collator(train=True).mlm_probability == 0.3
    assert MLMDataModule(**kw).collator(train=False).mlm_probability == 0.15  # the default strategy
    with pytest.raises(MLMError, match="data.masking.mask_replace_prob"):
        TokenMasking(mask_replace_prob=0.95)


def _saved(hparams: dict, tmp_path: Path) -> Path:
    path = tmp_path / "hparams.pt"
    torch.save({"datamodule_hyper_parameters": dict(hparams)}, path)
    return path
