"""The modern recipe's settings: warmup-stable-decay with 1-sqrt decay, weight averaging, masking-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

from mlm_lightning.callbacks import WeightAveragingSetting
from mlm_lightning.cli import run_cli
from mlm_lightning.data import MLMDataModule
from mlm_lightning.module import MLMModule

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64
)


@pytest.fixture
def dm(corpus_file: Path, tokenizer_dir: Path) -> MLMDataModule:
    dm = MLMDataModule(
        train_files=[str(corpus_file)], tokenizer=str(tokenizer_dir), max_seq_length=32, batch_size=8,
        layout="line_by_line",
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return dm


class LearningRates(Callback):
    """The learning rate each optimizer step runs with."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_wsd_holds_the_peak_then_decays_as_one_minus_sqrt(dm: MLMDataModule) -> None:
    module = MLMModule(vocab_size=dm.vocab_size, learning_rate=1e-3, warmup_steps=2, scheduler="wsd",
                       decay_ratio=0.4, **TINY)  # fmt: skip
    rates = LearningRates()
    trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[rates])  # fmt: skip
    trainer.fit(module, datamodule=dm)
    # 10 steps: warm-up 2 (0, 1/2), stable 4 at the peak, decay 4: 1 - sqrt((step - 6) / 4), reaching 0 at step 10.
    expected = [s / 2 for s in range(2)] + [1.0] * 4 + [1 - math.sqrt((s - 6) / 4) for s in range(6, 10)]
    assert rates.rates == pytest.approx([1e-3 * e for e in expected], abs=1e-12)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_wsd_decay_never_eats_the_warm_up(dm: MLMDataModule) -> None:
    module = MLMModule(vocab_size=dm.vocab_size, warmup_steps=8, scheduler="wsd", decay_ratio=1.0, **TINY)
    rates = LearningRates()
    trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[rates])  # fmt: skip
    trainer.fit(module, datamodule=dm)
    peak = module.hparams.learning_rate
    assert rates.rates[:8] == pytest.approx([peak * s / 8 for s in range(8)])  # the whole warm-up
    assert rates.rates[8:] == pytest.approx([peak, peak * (1 - math.sqrt(1 / 2))])  # decay in the 2 steps left


def _trainer_callbacks(tiny_args: list[str], *extra: str) -> list[Callback]:
    cli = run_cli([*tiny_args, *extra], run=False)
    return cli.trainer.callbacks


def test_weight_averaging_is_lightnings_callback_behind_a_switch(tiny_args: list[str]) -> None:
    assert not any(isinstance(c, EMAWeightAveraging) for c in _trainer_callbacks(tiny_args))
    found = [
        c
        for c in _trainer_callbacks(tiny_args, "--weight_averaging.enabled", "true", "--weight_averaging.decay", "0.9")
        if isinstance(c, EMAWeightAveraging)
    ]
    assert len(found) == 1 and isinstance(found[0], WeightAveragingSetting)
    assert found[0].decay == 0.9 and found[0].update_every_n_steps == 1


def test_weight_averaging_settings_are_checked(tiny_args: list[str], capsys: pytest.CaptureFixture) -> None:
    from mlm_lightning.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args, "--weight_averaging.decay", "1.5"])
    assert exit_info.value.code == 2
    assert "weight_averaging.decay must be a number" in capsys.readouterr().err
