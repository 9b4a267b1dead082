from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mlm_lightning.data import MLMDataModule
from mlm_lightning.errors import MLMError
from mlm_lightning.masking import IGNORE_INDEX
from mlm_lightning.module import POSITIONS_AFTER_PADDING, MLMModule, max_sequence_length

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64
)


@pytest.fixture
def dm(corpus_file: Path, tokenizer_dir: Path) -> MLMDataModule:
    dm = MLMDataModule(
        train_files=[str(corpus_file)],
        tokenizer=str(tokenizer_dir),
        max_seq_length=32,
        batch_size=8,
        layout="line_by_line",
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_masked_logits_equal_full_logits(dm: MLMDataModule) -> None:
    torch.manual_seed(0)
    module = MLMModule(vocab_size=dm.vocab_size, **TINY).eval()
    # A padded line_by_line batch, so the attention-mask path is exercised.
    batch = next(b for b in dm.val_dataloader() if "attention_mask" in b)
    with torch.no_grad():
        fast = module.masked_logits(batch)
        full = module(batch["input_ids"], batch.get("attention_mask"))
    mask = batch["labels"] != IGNORE_INDEX
    torch.testing.assert_close(fast, full[mask], rtol=1e-5, atol=1e-5)


def test_perplexity_is_token_weighted_over_the_whole_split(dm: MLMDataModule) -> None:
    torch.manual_seed(0)
    module = MLMModule(vocab_size=dm.vocab_size, **TINY)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=4)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]

    module.eval()
    total, count, correct, batch_ppls = 0.0, 0, 0, []
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            if i == 4:
                break
            logits = module(batch["input_ids"], batch.get("attention_mask"))
            mask = batch["labels"] != IGNORE_INDEX
            losses = F.cross_entropy(logits[mask], batch["labels"][mask], reduction="none")
            total += losses.sum().item()
            count += int(mask.sum())
            correct += int((logits[mask].argmax(-1) == batch["labels"][mask]).sum())
            batch_ppls.append(math.exp(losses.mean().item()))
    assert metrics["val/perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert metrics["val/loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["val/accuracy"] == pytest.approx(correct / count, abs=1e-6)
    # Not the mean of per-batch perplexities (batches hold different numbers of masked tokens).
    assert metrics["val/perplexity"] != pytest.approx(sum(batch_ppls) / len(batch_ppls), rel=1e-6)


def test_weight_decay_groups_and_schedule(dm: MLMDataModule) -> None:
    module = MLMModule(vocab_size=dm.vocab_size, learning_rate=1e-3, warmup_steps=2, scheduler="cosine", **TINY)
    trainer = L.Trainer(
        max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0
    )
    trainer.fit(module, datamodule=dm)
    opt = trainer.optimizers[0]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine reaches 0 at max_steps


def test_pretrained_model_rejects_a_larger_tokenizer(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(
        BertConfig(vocab_size=100, **{k: v for k, v in TINY.items() if k != "num_hidden_layers"}, num_hidden_layers=1)
    ).save_pretrained(tmp_path)
    assert MLMModule(model_name_or_path=str(tmp_path), vocab_size=100).model.config.vocab_size == 100
    with pytest.raises(MLMError, match="embeddings for only 100"):
        MLMModule(model_name_or_path=str(tmp_path), vocab_size=200)
    with pytest.raises(MLMError, match="could not load model"):
        MLMModule(model_name_or_path=str(tmp_path / "missing"), vocab_size=100)


def test_padded_vocabulary_trains_and_reloads(dm: MLMDataModule, tmp_path: Path) -> None:
    module = MLMModule(vocab_size=dm.vocab_size, pad_vocab_multiple=64, **TINY)
    assert module.model.config.vocab_size % 64 == 0 and module.model.config.vocab_size >= dm.vocab_size
    trainer = L.Trainer(
        max_steps=3, logger=False, enable_progress_bar=False, limit_val_batches=2, default_root_dir=tmp_path
    )
    trainer.fit(module, datamodule=dm)
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    again = MLMModule.load_from_checkpoint(ckpt)
    assert again.model.config.vocab_size == module.model.config.vocab_size


def test_pretrained_model_trains_with_dropout(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)
    module = MLMModule(model_name_or_path=str(tmp_path), vocab_size=100)
    assert all(m.training for m in module.modules())


@pytest.mark.parametrize("stage", ["validate", "test"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_evaluation_loss_is_reported_not_averaged_away(dm: MLMDataModule, stage: str, bad: float) -> None:
    torch.manual_seed(0)
    module = MLMModule(vocab_size=dm.vocab_size, **TINY)
    plain = module.masked_logits
    seen = []

    def poisoned(batch: dict) -> torch.Tensor:  # the second batch's first 3 masked tokens get a non-finite loss
        logits = plain(batch)
        seen.append(len(logits))
        if len(seen) == 2:
            logits = logits.clone()
            if math.isnan(bad):
                logits[:3] = bad  # NaN logits: NaN loss
            else:
                logits[torch.arange(3), batch["masked_labels"][:3]] = -bad  # the target's logit -inf: loss inf
        return logits

    module.masked_logits = poisoned
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=3, limit_test_batches=3
    )
    split, prefix = ("validation", "val") if stage == "validate" else ("test", "test")
    with pytest.warns(UserWarning) as caught:
        metrics = getattr(trainer, stage)(module, datamodule=dm, verbose=False)[0]
    loss = metrics[f"{prefix}/loss"]
    assert not math.isfinite(loss) and not math.isfinite(metrics[f"{prefix}/perplexity"])
    assert math.isnan(loss) if math.isnan(bad) else loss == math.inf
    notes = [str(w.message) for w in caught if "non-finite loss" in str(w.message)]
    assert notes == [
        f"{split}: 3 of {sum(seen):,} masked tokens have a non-finite loss (NaN or infinite), "
        f"so {prefix}/loss and {prefix}/perplexity are {loss}: the model has (partly) diverged. "
        f"Lower model.learning_rate or resume from an earlier checkpoint."
    ]


@pytest.mark.parametrize("model_type", [*POSITIONS_AFTER_PADDING, "bert"])
def test_max_sequence_length_is_the_longest_row_the_model_takes(model_type: str) -> None:
    from transformers import AutoConfig, AutoModelForMaskedLM

    extra = {"longformer": {"attention_window": 4}, "luke": {"entity_vocab_size": 10, "entity_emb_size": 8}}
    config = AutoConfig.for_model(
        model_type, vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=20, pad_token_id=3, **extra.get(model_type, {}),
    )  # fmt: skip
    model = AutoModelForMaskedLM.from_config(config).eval()
    if model_type == "xmod":
        model.set_default_language(config.languages[0])
    limit = max_sequence_length(config.to_dict())
    assert limit == {"bert": 20, "mpnet": 18}.get(model_type, 16)  # mpnet's padding index is always 1
    with torch.no_grad():
        model(input_ids=torch.full((1, limit), 7))
        with pytest.raises((IndexError, RuntimeError)):  # one token more reads past the position table
            model(input_ids=torch.full((1, limit + 1), 7))


def test_every_masked_lm_family_with_positions_after_padding_is_in_the_table() -> None:
    import importlib.util

    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    root = Path(importlib.util.find_spec("transformers.models").origin).parent
    found = set()
    for source in root.glob("*/modeling_*.py"):  # the model files that make position ids from padding
        text = source.read_text(encoding="utf-8")
        if "create_position_ids_from_input_ids(" in text:
            found |= {t for t, name in MODEL_FOR_MASKED_LM_MAPPING_NAMES.items() if f"class {name}(" in text}
    assert found == set(POSITIONS_AFTER_PADDING)
