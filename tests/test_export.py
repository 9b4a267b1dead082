from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.io.atomic import atomic_output_dir
from mlm_lightning.model.module import MLMModule
from tests.helpers import assert_one_line

SENTENCES = ["the king [MASK] the sword.", "thou art [MASK] and gentle."]


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_export_loads_offline_and_predicts_like_the_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    last = trained_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "model"
    assert main(["export", "--ckpt_path", str(last), "--output_dir", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }

    module = MLMModule.load_from_checkpoint(last, map_location="cpu").eval()
    exported = AutoModelForMaskedLM.from_pretrained(out).eval()  # HF_HUB_OFFLINE=1: no network
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = module(enc["input_ids"], enc["attention_mask"])
        torch.testing.assert_close(exported(**enc).logits, expected)

    fill = pipeline("fill-mask", model=str(out))
    at_mask = expected[0][enc["input_ids"][0] == tok.mask_token_id][0].softmax(-1)
    probs, ids = at_mask.topk(3)
    got = fill(SENTENCES[0], top_k=3)
    assert [c["token"] for c in got] == ids.tolist()
    assert [c["score"] for c in got] == pytest.approx(probs.tolist(), rel=1e-4)


def test_model_card_records_the_run(trained_run: Path, tmp_path: Path, corpus_file: Path) -> None:
    last = trained_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False, map_location="cpu")
    metrics = ckpt["mlm_lightning"]["val_metrics"]
    assert main(["export", "--ckpt_path", str(last), "--output_dir", str(tmp_path / "m")]) == 0
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: fill-mask\n")
    assert f"| optimizer steps | {ckpt['global_step']} |" in card
    assert f"| validation loss | {metrics['val/loss']:.4f} |" in card
    assert f"| validation perplexity | {metrics['val/perplexity']:.2f} |" in card
    assert f"| validation masked-token accuracy | {100 * metrics['val/accuracy']:.2f}% |" in card
    assert str(corpus_file) in card and "trained from scratch" in card


def test_export_is_atomic_and_does_not_overwrite_unless_asked(trained_run: Path, tmp_path: Path, capsys) -> None:
    last = str(trained_run / "checkpoints" / "last.ckpt")
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--ckpt_path", last, "--output_dir", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not _leftovers(tmp_path)

    assert main(["export", "--ckpt_path", last, "--output_dir", str(out), "--overwrite", "true"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert not _leftovers(tmp_path)

    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    assert main(["export", "--ckpt_path", str(bad), "--output_dir", str(tmp_path / "never")]) == 2
    assert "bad.ckpt: not a complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "never").exists() and not _leftovers(tmp_path)


def test_atomic_output_dir_keeps_the_old_folder_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_output_dir(target) as work:
        (work / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_output_dir(target, overwrite=True) as work:
        (work / "a.txt").write_text("half-written")
        raise RuntimeError("crash mid-export")
    assert (target / "a.txt").read_text() == "first"
    assert not _leftovers(tmp_path)


def test_fit_exports_its_best_checkpoint(trained_run: Path) -> None:
    from safetensors.torch import load_file

    (best,) = (trained_run / "checkpoints").glob("epoch*.ckpt")
    state = torch.load(best, weights_only=False, map_location="cpu")["state_dict"]
    exported = load_file(trained_run / "export" / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(exported[key], state[f"model.{key}"])
    step = best.name.split("step")[1].split("-")[0]
    assert f"| optimizer steps | {step} |" in (trained_run / "export" / "README.md").read_text()


def test_export_drops_the_rows_of_a_padded_vocabulary(tiny_args: list[str], tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    steps = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--model.pad_vocab_multiple", "64"]
    assert main(["fit", *tiny_args, *steps]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert main(["export", "--ckpt_path", str(last), "--output_dir", str(tmp_path / "m")]) == 0
    module = MLMModule.load_from_checkpoint(last, map_location="cpu").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "m").eval()
    assert module.model.config.vocab_size % 64 == 0 and exported.config.vocab_size == len(tok) < 256
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = module(enc["input_ids"], enc["attention_mask"])[..., : len(tok)]
        torch.testing.assert_close(exported(**enc).logits, expected)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings from /proc")
def test_export_maps_the_checkpoint_instead_of_reading_it(trained_run: Path) -> None:
    from mlm_lightning.tools.export import load_checkpoint

    # At the end of fit the export runs inside the trainer: reading the optimizer's state (two thirds of the
    # file) into memory put +430 MB on base.yaml's peak. Mapped tensors are read only where used (the weights).
    last = trained_run / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    moment = next(iter(ckpt["optimizer_states"][0]["state"].values()))["exp_avg"]
    weight = next(iter(ckpt["state_dict"].values()))
    mapped = []  # address ranges of the checkpoint file's mappings in this process
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(last.resolve()):
            start, end = (int(a, 16) for a in fields[0].split("-"))
            mapped.append(range(start, end))
    assert all(any(t.data_ptr() in r for r in mapped) for t in (moment, weight))


def test_export_prints_one_line_and_no_progress_bar(trained_run: Path, tmp_path: Path, capfd) -> None:
    """transformers' "Writing model shards" bar (one shard: nothing to say) stays out of the output and logs."""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    last = trained_run / "checkpoints" / "last.ckpt"
    assert main(["export", "--ckpt_path", str(last), "--output_dir", str(tmp_path / "model")]) == 0
    out, err = capfd.readouterr()
    assert "shards" not in out + err and "\r" not in out + err
    assert out.strip().splitlines() == [
        f"exported {last} (step {torch.load(last, weights_only=False)['global_step']}) to {tmp_path / 'model'}"
    ]
    assert hf_logging.is_progress_bar_enabled()  # restored for the caller


def test_a_full_disk_in_the_weights_writer_is_one_line(trained_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import transformers.modeling_utils
    from safetensors import SafetensorError

    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a previous export, to be kept whole

    def full(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"\0" * 100)  # what fit before the disk was full
        # What safetensors (Rust: no OSError) raises for ENOSPC; 17 lines of traceback reached the user.
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    assert main(["export", "--ckpt_path", ckpt, "--output_dir", str(out), "--overwrite", "true"]) == 2
    assert_one_line(capsys.readouterr().err.strip().splitlines(), "disk full", str(out), "previous export is intact")
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (out / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Error while serializing: I/O error: No space left on device (os error 28)", 28),  # safetensors 0.8
        ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })', 28),
        ("Disk quota exceeded (os error 122)", 122),  # tokenizers' save
        ("no OS error here", None),
    ],
)
def test_the_os_error_of_a_library_exception_is_read_from_its_text(text: str, number: int | None) -> None:
    from mlm_lightning.io.atomic import os_errno

    assert os_errno(RuntimeError(text)) == number


def test_export_files_are_shareable_and_its_card_loads_from_anywhere(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    # safetensors wrote model.safetensors 0600 while the other files were 0644: the team could not read it.
    mask = os.umask(0o022)
    try:
        monkeypatch.chdir(tmp_path)
        assert main(["export", "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt"), "--output_dir", "m"]) == 0
    finally:
        os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    # The usage line names the export by its absolute path (it was "m": only right from this folder).
    assert f'pipeline("fill-mask", model="{tmp_path / "m"}")' in (tmp_path / "m" / "README.md").read_text()
