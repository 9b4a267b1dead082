"""The modern recipe's settings: warmup-stable-decay with 1-sqrt decay, weight averaging, masking-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

from mlm_lightning.callbacks import WeightAveragingSetting
from mlm_lightning.cli.lightning_cli import run_cli
from mlm_lightning.data import MLMDataModule
from mlm_lightning.model.module import MLMModule

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


# -- masking-rate schedule ----------------------------------------------------------------------------------------
def test_the_sampler_numbers_training_batches_across_epochs_and_resumes() -> None:
    from mlm_lightning.data import MLMSampler

    sampler = MLMSampler(10, batch_size=4)  # batches of 4, 4, 2: three per epoch
    assert [key[2] for key in sampler] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    sampler.set_epoch(1)
    assert [key[2] for key in sampler] == [3, 3, 3, 3, 4, 4, 4, 4, 5, 5]
    whole = list(sampler)
    sampler.resume(1, consumed_batches=1)  # a resumed run skips the first batch and numbers the rest the same
    assert list(sampler) == whole[4:]


def test_the_masking_rate_moves_from_start_to_mlm_probability(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    from mlm_lightning.data.masking import TokenMasking
    from mlm_lightning.errors import MLMError

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    masking = TokenMasking(mlm_probability=0.15, start_probability=0.3, schedule_steps=10)
    train, val = masking.collator(tok, seed=0, train=True), masking.collator(tok, seed=0, train=False)
    assert [train.rate(b) for b in (0, 5, 10, 99)] == pytest.approx([0.3, 0.225, 0.15, 0.15])
    assert val.rate(0) == 0.15  # validation masks at the final rate from the first step: comparable figures
    assert TokenMasking().collator(tok, seed=0, train=True).rate(0) == 0.15  # no schedule
    ids = np.array([tok.cls_token_id, *range(10, 190), tok.sep_token_id])  # 180 maskable tokens

    def share(batch: int) -> float:
        examples = [{"input_ids": ids, "index": i, "epoch": 0, "batch": batch} for i in range(40)]
        return float((train(examples)["labels"] != -100).float().mean())

    assert share(0) == pytest.approx(0.3 * 180 / 182, abs=0.02)
    assert share(10) == pytest.approx(0.15 * 180 / 182, abs=0.02)
    assert share(3) == share(3)  # a function of the batch number: the same masks again
    with pytest.raises(MLMError, match="gives no batch number"):  # never silently the final rate
        train([{"input_ids": ids, "index": 0, "epoch": 0}])


def test_a_schedule_needs_its_length() -> None:
    from mlm_lightning.data.masking import TokenMasking
    from mlm_lightning.errors import MLMError

    with pytest.raises(MLMError, match="needs data.masking.schedule_steps"):
        TokenMasking(start_probability=0.3)


def test_a_masking_schedule_trains_from_the_command_line(tiny_args: list[str]) -> None:
    from mlm_lightning.__main__ import main

    args = ["--data.masking.start_probability", "0.3", "--data.masking.schedule_steps", "6", "--trainer.max_steps", "4"]
    assert main(["fit", *tiny_args, *args]) == 0
