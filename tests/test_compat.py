"""Checkpoints and configs written before the package layout changed (issue 21) still load.

The fixtures in ``tests/fixtures/before_layout/`` were written by commit 3a3639c, when the package was flat
(``mlm_lightning.masking.TokenMasking``, ``mlm_lightning.callbacks.DashboardLayout``, ...): the ``last.ckpt`` of a
tiny fit stopped at step 2 of 4, its configuration as ``--print_config`` saved it, every callback class path
of that commit (README.md there says how). Each test uses them the way a user would after an upgrade. Old paths are
the point: the first test checks that the files still hold them, so a regenerated fixture cannot pass unnoticed.
"""

from __future__ import annotations

import csv
import importlib
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mlm_lightning.__main__ import main

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "before_layout"
CHECKPOINT = FIXTURES / "last.ckpt"
CONFIG = FIXTURES / "config.yaml"
CLASSES = FIXTURES / "classes.yaml"  # every callback / checkpoint-plugin class path of the flat layout

# Class paths as the flat layout wrote them (a class moved since must still be found under them).
OLD_MASKING = "mlm_lightning.masking.TokenMasking"
OLD_CONFIG_CLASSES = [OLD_MASKING, "mlm_lightning.callbacks.DashboardLayout"]
# The Python import paths the package exported and docs/models.md and docs/training.md gave (use without the CLI).
OLD_IMPORTS = [
    "mlm_lightning.module.MLMModule",
    "mlm_lightning.data.datamodule.MLMDataModule",
    "mlm_lightning.data.MLMDataModule",  # its class path (MLMDataModule.__module__ is set to the package)
    "mlm_lightning.MLMModule",  # the package's public names (__all__)
    "mlm_lightning.MLMDataModule",
    "mlm_lightning.MLMCollator",
    "mlm_lightning.masking.MLMCollator",
    OLD_MASKING,
    "mlm_lightning.masking.MaskingStrategy",
    "mlm_lightning.random_states.RandomStates",
    "mlm_lightning.last_checkpoint.MLMCheckpoint",
    "mlm_lightning.checkpoint_io.AtomicCheckpointIO",
    "mlm_lightning.nonfinite.NonFiniteLoss",
    "mlm_lightning.export.load_model",  # docs/adaptation.md
    "mlm_lightning.atomic.atomic_file",  # docs/training.md
]
SENTENCE = "the [MASK] of the king."


def _classes() -> list[str]:
    """The class paths of classes.yaml: every callback and the checkpoint plugin."""
    trainer = yaml.safe_load(CLASSES.read_text())["trainer"]
    return [c["class_path"] for c in trainer["callbacks"] + trainer["plugins"]]


@pytest.fixture(autouse=True)
def _at_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixtures name their corpus and tokenizer relative to the repository root, as a user's run folder does.
    monkeypatch.chdir(ROOT)


def _saved() -> dict:
    return torch.load(CHECKPOINT, map_location="cpu", weights_only=True)


def _outputs(tmp_path: Path) -> list[str]:
    """Everything config.yaml writes (run folder, checkpoints, TensorBoard) moved under ``tmp_path``."""
    root = str(tmp_path / "run")
    return [
        "--trainer.default_root_dir",
        root,
        "--checkpoint.dirpath",
        f"{root}/checkpoints",
        "--trainer.logger.init_args.save_dir",
        root,
    ]


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_the_fixtures_hold_the_flat_layouts_class_paths() -> None:
    saved = _saved()
    assert saved["datamodule_hyper_parameters"]["masking"]["class_path"] == OLD_MASKING
    assert saved["MLMDataModule"]["identity"]["data.masking"]["class_path"] == OLD_MASKING  # compared on resume
    assert saved["datamodule_hyper_parameters"]["masking"]["init_args"]["whole_word_mask"] is True
    assert saved["global_step"] == 2 and saved["mlm_lightning"]["format"] == 2
    assert set(saved["callbacks"]) >= {"NonFiniteLoss", "ValidateBeforeFit", "RandomStates"}
    assert any(key.startswith("MLMCheckpoint{") for key in saved["callbacks"])
    config = yaml.safe_load(CONFIG.read_text())
    assert config["data"]["masking"]["class_path"] == OLD_MASKING
    assert [c["class_path"] for c in config["trainer"]["callbacks"]] == OLD_CONFIG_CLASSES[1:]
    paths = _classes()
    assert len(paths) == 17 and all(p.startswith("mlm_lightning.") and p.count(".") == 2 for p in paths)


@pytest.mark.parametrize(
    "path", OLD_IMPORTS + [c["class_path"] for c in yaml.safe_load(CLASSES.read_text())["trainer"]["callbacks"]]
)
def test_old_class_paths_still_import(path: str) -> None:
    assert _import(path).__name__ == path.rpartition(".")[2]


def test_the_old_config_parses(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIG), "--config", str(CLASSES), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["masking"]["class_path"].endswith(".TokenMasking")
    assert printed["data"]["masking"]["init_args"]["whole_word_mask"] is True
    listed = [c["class_path"].rpartition(".")[2] for c in printed["trainer"]["callbacks"]]
    assert listed == [
        c["class_path"].rpartition(".")[2] for c in yaml.safe_load(CLASSES.read_text())["trainer"]["callbacks"]
    ]


def test_module_and_data_module_load_from_the_old_checkpoint() -> None:
    module_class, data_class = _import(OLD_IMPORTS[0]), _import(OLD_IMPORTS[1])
    module = module_class.load_from_checkpoint(CHECKPOINT, map_location="cpu", weights_only=True)
    assert module.hparams.hidden_size == 32 and module.hparams.vocab_size == 200
    # The data module's settings hold the masking strategy by its class path: it is imported from that string.
    data = data_class.load_from_checkpoint(CHECKPOINT, weights_only=True)
    assert type(data.masking).__name__ == "TokenMasking" and data.masking.whole_word_mask is True
    # What a resume from Python does (Lightning restores the data module's state): the checkpoint's data identity,
    # which names the strategy by the old class path, is the same data as the strategy built from it.
    data.check_resumed_data(_saved()["MLMDataModule"]["identity"], str(CHECKPOINT))


@pytest.mark.slow
def test_fit_resumes_the_old_checkpoint_with_the_old_config(tmp_path: Path) -> None:
    # The checkpoint was stopped at step 2 of the configured 4: the resume runs steps 3 and 4 of the same schedule.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(CONFIG), *_outputs(tmp_path), "--ckpt_path", str(CHECKPOINT)]) == 0
    # Every callback state of the checkpoint found its callback (Lightning warns of those left unrestored, by key).
    assert not [w for w in caught if "Please add the following callbacks" in str(w.message)]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4 and saved["lr_schedulers"][0]["last_epoch"] == 4
    assert math.isfinite(saved["mlm_lightning"]["val_metrics"]["val/loss"])
    assert saved["mlm_lightning"]["val_metrics"] != _saved()["mlm_lightning"]["val_metrics"]  # it trained on
    assert saved["datamodule_hyper_parameters"]["masking"]["init_args"]["whole_word_mask"] is True


@pytest.mark.slow
def test_a_new_fit_runs_from_the_old_config(tmp_path: Path) -> None:
    assert main(["fit", "--config", str(CONFIG), *_outputs(tmp_path), "--trainer.max_steps", "1"]) == 0
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 1
    assert saved["datamodule_hyper_parameters"]["masking"]["init_args"]["whole_word_mask"] is True


def test_export_of_the_old_checkpoint(tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "model"
    assert main(["export", "--ckpt_path", str(CHECKPOINT), "--output_dir", str(out)]) == 0
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    weight = model.get_input_embeddings().weight
    assert torch.equal(weight, _saved()["state_dict"]["model.bert.embeddings.word_embeddings.weight"])
    assert (out / "tokenizer.json").is_file() and "| optimizer steps | 2 |" in (out / "README.md").read_text()


def test_fill_mask_from_the_old_checkpoint(capsys: pytest.CaptureFixture) -> None:
    assert main(["fill-mask", "--model", str(CHECKPOINT), SENTENCE, "--top_k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == SENTENCE
    assert len([line for line in lines if re.match(r"^\s+\d+\. \S+\s+[0-9.]+$", line)]) == 3


def test_evaluate_reproduces_the_old_checkpoints_validation(tmp_path: Path) -> None:
    # Same rows, same fixed masks (whole words, by the checkpoint's strategy): the loss the run recorded at step 2.
    table = tmp_path / "table.csv"
    args = ["evaluate", "--models", str(CHECKPOINT), "--output", str(table), "--config", str(CONFIG)]
    assert main([*args, *_outputs(tmp_path)]) == 0
    with open(table, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    recorded = _saved()["mlm_lightning"]["val_metrics"]
    for key in ("loss", "perplexity", "accuracy"):  # (its word figures mask every piece: not the run's)
        assert float(row[key]) == pytest.approx(recorded[f"val/{key}"], rel=1e-4), key


def test_inspect_takes_the_saved_config_as_it_is(capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "--config", str(CONFIG)]) == 0
    assert "| tokens |" in capsys.readouterr().out
