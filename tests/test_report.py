from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlm_lightning.__main__ import main
from mlm_lightning.data import MLMDataModule
from mlm_lightning.tools.report import corpus_report, format_report, report_warnings
from tests.conftest import make_corpus


def _dm(files: list[Path], tokenizer_dir: Path, **kw) -> MLMDataModule:
    return MLMDataModule(train_files=[str(f) for f in files], tokenizer=str(tokenizer_dir), **kw)


@pytest.mark.parametrize("layout", ["line_by_line", "packed"])
def test_report_matches_the_batches_the_model_sees(corpus_file: Path, tokenizer_dir: Path, layout: str) -> None:
    dm = _dm([corpus_file], tokenizer_dir, layout=layout, max_seq_length=24, batch_size=8, val_fraction=0.1)
    stats = corpus_report(dm)
    docs = corpus_file.read_text().splitlines()
    lengths = [len(dm.tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
    assert stats["train"].documents + stats["val"].documents == len(docs)
    assert stats["train"].tokens + stats["val"].tokens == sum(lengths)
    assert stats["train"].unk_tokens == 0 and stats["train"].longest_document <= max(lengths)

    # Rows, batches, tokens and padding from the real training loader (first epoch).
    loader = dm.train_dataloader()
    real = positions = batches = 0
    for batch in loader:
        mask = batch.get("attention_mask")
        real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        positions += batch["input_ids"].numel()
        batches += 1
    train = stats["train"]
    assert (train.rows, train.batches, train.row_tokens) == (len(loader.dataset), batches, real)
    assert train.padding_share == pytest.approx(1 - real / positions)
    if layout == "line_by_line":
        assert train.padding_share > 0
        assert train.split_documents == dm.datasets["train"].windowed_documents > 0
    else:
        # Documents whose tokens land in more than one block, counted the slow way.
        offsets = np.load(dm.datasets["train"].folder / "doc_offsets.npy")
        block = dm.max_seq_length - 1
        slow = sum(len({p // block for p in range(a, b)}) > 1 for a, b in zip(offsets[:-1], offsets[1:]))
        assert train.split_documents == slow > 0
    text = format_report(stats, dm)
    assert f"| documents | {train.documents:,} | {stats['val'].documents:,} |" in text
    assert report_warnings(stats, dm, max_positions=64) == []


def test_report_warns_on_likely_mistakes(tmp_path: Path, tokenizer_dir: Path) -> None:
    # Words the 200-token tokenizer has never seen (another script) and one file holding most of the text.
    big = tmp_path / "big.txt"
    big.write_text("\n".join(make_corpus(300, seed=3)) + "\nζωή και θάνατος ψυχή\n" * 200, encoding="utf-8")
    small = tmp_path / "small.txt"
    small.write_text("\n".join(make_corpus(20, seed=4)), encoding="utf-8")
    dm = _dm([big, small], tokenizer_dir, text_layout="file", val_files=[str(small)], max_seq_length=128)
    stats = corpus_report(dm)
    found = report_warnings(stats, dm, max_positions=64)
    assert len(found) == 3
    unk, one_doc, positions = found
    assert "of the train tokens are [UNK]" in unk and stats["train"].unk_rate > 0.01
    assert "one document holds" in one_doc and "data.text_layout" in one_doc
    assert "data.max_seq_length=128 is above the 64 tokens the model's position embeddings take" in positions


def test_inspect_reads_the_fit_config_and_trains_nothing(tiny_args: list[str], tmp_path: Path, capsys) -> None:
    assert main(["inspect", *tiny_args]) == 0
    out, err = capsys.readouterr()
    assert "| documents |" in out and "| blocks per epoch |" in out and "warning" not in err
    assert not (tmp_path / "run").exists()  # no logs, no checkpoints

    assert main(["inspect", *tiny_args, "--data.max_seq_length", "128", "--data.layout", "line_by_line"]) == 0
    out, err = capsys.readouterr()
    assert "| rows per epoch |" in out
    assert "warning: data.max_seq_length=128 is above the 64 tokens the model's position embeddings take" in err
