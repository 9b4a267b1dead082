"""No code runs from a checkpoint: every command that reads one reads it weights-only, and refuses a crafted file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.errors import MLMError
from mlm_lightning.io.checkpoint_io import CHECKPOINT_FORMAT, SAFE_GLOBALS, read_checkpoint
from tests.helpers import assert_one_line


class _Payload:
    """Unpickled, it calls ``open(marker, "w")``: a stand-in for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def crafted_checkpoint(folder: Path) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: a Lightning-shaped checkpoint whose full unpickling creates ``marker``."""
    path, marker = folder / "crafted.ckpt", folder / "MARKER"
    hparams = {"tokenizer_name_or_path": "x", "note": _Payload(marker)}
    torch.save({"state_dict": {"model.w": torch.ones(2)}, "hyper_parameters": hparams, "global_step": 1}, path)
    return path, marker


def test_the_crafted_checkpoint_runs_its_code_when_fully_unpickled(tmp_path: Path) -> None:
    # The control: the file is truly dangerous, and --weights_only false (for a trusted file) does unpickle it.
    path, marker = crafted_checkpoint(tmp_path)
    read_checkpoint(path, weights_only=False)
    assert marker.exists()


def _refused(argv: list[str], marker: Path, capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "crafted.ckpt: refused: reading it would call io.open" in err[0]
    assert err[0].endswith("pass --weights_only false")
    assert not marker.exists()
    return err[0]


def test_export_and_fill_mask_refuse_a_crafted_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, marker = crafted_checkpoint(tmp_path)
    _refused(["export", "--ckpt_path", str(path), "--output_dir", str(tmp_path / "out")], marker, capsys)
    assert not (tmp_path / "out").exists()
    _refused(["fill-mask", "--model", str(path), "the [MASK] of the king."], marker, capsys)


def test_evaluate_refuses_a_crafted_checkpoint(
    tiny_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, marker = crafted_checkpoint(tmp_path)
    _refused(["evaluate", "--models", str(path), *tiny_args], marker, capsys)


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_fit_and_validate_refuse_a_crafted_checkpoint(
    subcommand: str, tiny_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, marker = crafted_checkpoint(tmp_path)
    _refused([subcommand, *tiny_args, "--ckpt_path", str(path)], marker, capsys)
    assert not (tmp_path / "run").exists()  # nothing written


def test_the_few_types_of_our_own_checkpoints_are_read_weights_only(tmp_path: Path) -> None:
    # Hyperparameters given as paths from Python reach checkpoints as Path objects: allowed, and only those.
    path = tmp_path / "paths.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"train_files": [Path("a.txt")]}}, path)
    assert read_checkpoint(path)["hyper_parameters"]["train_files"] == [Path("a.txt")]
    assert all(isinstance(t, type) for t in SAFE_GLOBALS)
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(tmp_path / "m")}}, path)
    with pytest.raises(MLMError, match="refused"):
        read_checkpoint(path, weights_only=None)  # Lightning's "not set" is weights-only too
    assert not (tmp_path / "m").exists()


def test_a_model_folder_with_its_own_code_is_refused_without_running_it(tmp_path: Path) -> None:
    import json

    from transformers import BertConfig

    from mlm_lightning.model.loading import load_masked_lm

    folder, marker = tmp_path / "model", tmp_path / "MARKER"
    BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForMaskedLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(MLMError, match="could not load model"):
        load_masked_lm(str(folder))
    assert not marker.exists()


def _with_format(folder: Path, version: object) -> Path:
    path = folder / f"format-{version}.ckpt"
    record = {"format": version, "model_config": {"model_type": "bert"}}
    torch.save({"state_dict": {}, "hyper_parameters": {"vocab_size": 200}, "mlm_lightning": record}, path)
    return path


def test_a_checkpoint_of_a_newer_format_is_refused_by_every_command(
    tiny_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _with_format(tmp_path, CHECKPOINT_FORMAT + 1)
    commands = [
        ["export", "--ckpt_path", str(path), "--output_dir", str(tmp_path / "out")],
        ["fill-mask", "--model", str(path), "the [MASK] of the king."],
        ["evaluate", "--models", str(path), *tiny_args],
        ["fit", *tiny_args, "--ckpt_path", str(path)],  # resume
        ["validate", *tiny_args, "--ckpt_path", str(path)],
    ]
    for argv in commands:
        capsys.readouterr()
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err.strip().splitlines()
        assert_one_line(err, f"{path}:", f"format {CHECKPOINT_FORMAT + 1}", f"up to {CHECKPOINT_FORMAT}", "upgrade")
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("version", ["2", 0, True, None])
def test_a_checkpoint_record_of_an_unknown_layout_is_refused(tmp_path: Path, version: object) -> None:
    with pytest.raises(MLMError, match="has a layout this mlm-lightning .* does not know"):
        read_checkpoint(_with_format(tmp_path, version))


def test_an_older_checkpoint_is_migrated_with_one_info_line(
    trained_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    last = trained_run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True, map_location="cpu")
    assert ckpt["mlm_lightning"]["format"] == CHECKPOINT_FORMAT  # what fit writes
    del ckpt["mlm_lightning"]["format"]  # as every checkpoint before the format was recorded (format 1)
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with caplog.at_level("INFO", logger="mlm_lightning.io.checkpoint_io"):
        assert main(["export", "--ckpt_path", str(old), "--output_dir", str(tmp_path / "model")]) == 0
        assert read_checkpoint(old)["mlm_lightning"]["format"] == CHECKPOINT_FORMAT  # read again: said once
    lines = [r.getMessage() for r in caplog.records if r.name == "mlm_lightning.io.checkpoint_io"]
    assert lines == [f"{old}: checkpoint format 1 (an older mlm-lightning), read as format {CHECKPOINT_FORMAT}"]
    assert (tmp_path / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_run_resumes_from_an_older_checkpoint(trained_run: Path, tiny_args: list[str], tmp_path: Path) -> None:
    from mlm_lightning.cli.lightning_cli import run_cli

    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    del ckpt["mlm_lightning"]["format"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    args = [*tiny_args, "--trainer.max_steps", "14"]  # the same tokenizer and settings as trained_run
    cli = run_cli(["fit", *args, "--ckpt_path", str(old)])
    assert cli.trainer.global_step == 14
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert saved["mlm_lightning"]["format"] == CHECKPOINT_FORMAT
