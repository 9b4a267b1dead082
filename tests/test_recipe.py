"""The modern recipe's settings: warmup-stable-decay with 1-sqrt decay, weight averaging, masking-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
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


# -- sequence-length warm-up ------------------------------------------------------------------------------------------


def test_the_warm_up_length_grows_in_multiples_of_8_to_the_full_row() -> None:
    from mlm_lightning.data.sequence_warmup import warmup_length

    # 32 -> 128 over 12 batches: +8 a batch; after the warm-up, and far past it, the full row.
    assert [warmup_length(32, 12, 128, b) for b in (0, 1, 2, 6, 11, 12, 500)] == [32, 40, 48, 80, 120, 128, 128]
    assert [warmup_length(30, 4, 64, b) for b in (0, 1, 3, 4)] == [30, 32, 48, 64]  # 38.5, 55.5 rounded down to 8s


def test_warm_up_cuts_masked_rows_keeping_every_token_and_target(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    from mlm_lightning.data.masking import TokenMasking
    from mlm_lightning.data.sequence_warmup import SequenceWarmup

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    whole = TokenMasking().collator(tok, seed=0, train=True)
    cut = whole.with_sequence_warmup(SequenceWarmup(start_length=16, steps=4), max_seq_length=64)
    ids = np.array([tok.cls_token_id, *range(10, 72), tok.sep_token_id])  # one full row of 64
    examples = [{"input_ids": ids, "index": i, "epoch": 0, "batch": 0} for i in range(3)]
    a, b = whole(examples), cut(examples)
    assert tuple(a["input_ids"].shape) == (3, 64) and tuple(b["input_ids"].shape) == (12, 16)
    # The same masked row, cut: tokens, targets and the chosen positions' labels in the same order.
    assert torch.equal(b["input_ids"].reshape(3, 64), a["input_ids"])
    assert torch.equal(b["labels"].reshape(3, 64), a["labels"])
    assert torch.equal(b["masked_labels"], a["masked_labels"]) and b["num_tokens"] == a["num_tokens"] == 192
    assert b["num_token_pairs"] == 12 * 16 * 16 and "attention_mask" not in b
    # Past the warm-up, or in validation, rows stay whole.
    later = [{**e, "batch": 4} for e in examples]
    assert tuple(cut(later)["input_ids"].shape) == (3, 64)
    val = TokenMasking().collator(tok, seed=0, train=False)
    assert tuple(
        val.with_sequence_warmup(SequenceWarmup(start_length=16, steps=4), 64)(examples)["input_ids"].shape
    ) == (
        3,
        64,
    )


def test_a_cut_that_leaves_a_short_piece_pads_it(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    from mlm_lightning.data.masking import TokenMasking
    from mlm_lightning.data.sequence_warmup import SequenceWarmup

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cut = TokenMasking().collator(tok, seed=0, train=True).with_sequence_warmup(SequenceWarmup(16, 4), 64)
    ids = np.array([tok.cls_token_id, *range(10, 48), tok.sep_token_id])  # 40 tokens: pieces of 16, 16, 8
    batch = cut([{"input_ids": ids, "index": 0, "epoch": 0, "batch": 0}])
    assert batch["attention_mask"].sum(1).tolist() == [16, 16, 8]
    assert batch["num_tokens"] == 40 and batch["num_token_pairs"] == 16 * 16 * 2 + 8 * 8


def test_warm_up_settings_are_checked(tiny_args: list[str], capsys: pytest.CaptureFixture) -> None:
    from mlm_lightning.__main__ import main

    for flags, message in (
        (["--data.sequence_warmup.start_length", "16"], "needs data.sequence_warmup.steps"),
        (["--data.sequence_warmup.start_length", "64", "--data.sequence_warmup.steps", "2"], "must be below"),
        (["--data.sequence_warmup.start_length", "4", "--data.sequence_warmup.steps", "2"], "start_length"),
    ):
        try:  # a type the parser refuses exits there; a value checked in __init__ returns
            code = main(["fit", *tiny_args, *flags])
        except SystemExit as stop:
            code = stop.code
        assert code == 2
        assert message in capsys.readouterr().err


def test_warm_up_trains_from_the_command_line_its_setting_in_the_checkpoint(
    tiny_args: list[str], tmp_path: Path
) -> None:
    from mlm_lightning.__main__ import main
    from mlm_lightning.io.checkpoint_io import read_checkpoint

    flags = ["--data.sequence_warmup.start_length", "16", "--data.sequence_warmup.steps", "3"]
    assert main(["fit", *tiny_args, *flags, "--trainer.max_steps", "4"]) == 0
    checkpoints = sorted((tmp_path / "run").rglob("*.ckpt"))
    assert checkpoints
    for ckpt in checkpoints:  # plain data, so a weights-only load reads it (and a resume rebuilds the setting)
        hparams = read_checkpoint(ckpt, weights_only=True)["datamodule_hyper_parameters"]
        assert hparams["sequence_warmup"] == {"start_length": 16, "steps": 3}
