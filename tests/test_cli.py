from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
import yaml

from mlm_lightning.__main__ import main
from mlm_lightning.cli import run_cli
from mlm_lightning.module import MLMModule

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


def test_validate_and_test_subcommands(tiny_args: list[str], tmp_path: Path) -> None:
    assert main(["fit", *tiny_args]) == 0
    last = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert main(["validate", *tiny_args, "--ckpt_path", last]) == 0
    assert main(["test", *tiny_args, "--ckpt_path", last]) == 0


def test_config_typo_is_rejected(tiny_args: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args, "--data.batchsize", "4"])
    assert exit_info.value.code != 0
    assert "batchsize" in capsys.readouterr().err
