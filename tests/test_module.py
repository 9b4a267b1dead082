from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mlm_lightning.data import MLMDataModule
from mlm_lightning.data.collator import IGNORE_INDEX
from mlm_lightning.errors import MLMError
from mlm_lightning.families import FAMILIES, max_sequence_length
from mlm_lightning.model.compilation import CompilePolicy
from mlm_lightning.model.module import MLMModule
from mlm_lightning.training.schedule import total_optimizer_steps
from tests.helpers import assert_one_line

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


def test_cpu_head_runs_on_a_few_row_counts_with_the_same_logits_and_gradients() -> None:
    # oneDNN caches a kernel per matrix shape (up to 1,024): a head run on every new masked count grew base.yaml's
    # bf16 trainer by about 3 MB a step. Padded to multiples of HEAD_ROWS_MULTIPLE, it sees a few shapes.
    from mlm_lightning.model.head import HEAD_ROWS_MULTIPLE

    vocab = 100
    torch.manual_seed(0)
    module = MLMModule(vocab_size=vocab, **TINY).eval()
    rows: list[int] = []
    module.model.cls.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    input_ids = torch.randint(5, vocab, (4, 40))
    for count in (5, 17, 64, 70, 150):
        positions = torch.randperm(160)[:count].sort().values
        batch = {"input_ids": input_ids, "masked_positions": positions}
        logits = module.masked_logits(batch)
        hidden = module.model.base_model(input_ids=input_ids)[0].flatten(0, 1)
        reference = module.model.cls(hidden.index_select(0, positions))
        assert logits.shape == (count, vocab)
        torch.testing.assert_close(logits, reference)
        weight = module.model.cls.predictions.transform.dense.weight
        torch.testing.assert_close(
            torch.autograd.grad(logits.square().mean(), weight), torch.autograd.grad(reference.square().mean(), weight)
        )
    assert rows[::2] == [64, 64, 64, 128, 192] and all(r % HEAD_ROWS_MULTIPLE == 0 for r in rows[::2])


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


def test_attention_dropout_replaces_the_models_own(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)

    def dropouts(module: MLMModule) -> tuple[set[float], set[float]]:  # (attention's, the other dropouts')
        named = [(n, m.p) for n, m in module.model.named_modules() if isinstance(m, torch.nn.Dropout)]
        return {p for n, p in named if n.endswith("attention.self.dropout")}, {p for n, p in named if "self" not in n}

    pretrained = MLMModule(model_name_or_path=str(tmp_path), vocab_size=100, attention_dropout=0.0)
    assert dropouts(pretrained) == ({0.0}, {0.1}) and pretrained.model.config.attention_probs_dropout_prob == 0.0
    assert dropouts(MLMModule(model_name_or_path=str(tmp_path), vocab_size=100)) == ({0.1}, {0.1})  # unset: its own
    new = MLMModule(vocab_size=100, dropout=0.2, attention_dropout=0.05, **TINY)
    assert dropouts(new) == ({0.05}, {0.2})
    distil = MLMModule(vocab_size=100, model_type="distilbert", attention_dropout=0.0, **TINY).model.config
    assert distil.attention_dropout == 0.0 and distil.dropout == 0.1
    with pytest.raises(MLMError, match="model.attention_dropout: a fnet config has no attention dropout"):
        MLMModule(vocab_size=100, model_type="fnet", attention_dropout=0.0, **TINY)


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
    assert_one_line(notes, f"3 of {sum(seen):,} masked tokens", f"{prefix}/loss", f"are {loss}", prefix=f"{split}: ")


POSITIONS_AFTER_PADDING = [f.name for f in FAMILIES.values() if f.positions_after_padding is not None]


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


class LearningRates(L.Callback):
    """``{step: learning rate}`` of the steps a fit ran (the rate each step's update used)."""

    def __init__(self) -> None:
        self.rates: dict[int, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, *_) -> None:
        self.rates[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_schedule_ends_when_max_epochs_ends_training_before_max_steps(dm: MLMDataModule) -> None:
    module = MLMModule(vocab_size=dm.vocab_size, learning_rate=1e-3, warmup_steps=0, **TINY)
    rates = LearningRates()
    trainer = L.Trainer(
        max_epochs=2, max_steps=100, limit_train_batches=3, limit_val_batches=0, callbacks=[rates],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 6 and total_optimizer_steps(trainer) == 6  # 2 epochs of 3, not max_steps
    assert [rates.rates[s] for s in range(6)] == pytest.approx([1e-3 * (6 - s) / 6 for s in range(6)])
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0  # decayed to its end


@pytest.mark.slow
def test_resuming_with_more_steps_never_jumps_the_learning_rate(
    dm: MLMDataModule, tmp_path: Path, recwarn: pytest.WarningsRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(name: str, max_steps: int, ckpt_path: Path | None = None, **kwargs) -> dict[int, float]:
        module = MLMModule(vocab_size=dm.vocab_size, learning_rate=1e-3, warmup_steps=2, **TINY, **kwargs)
        rates = LearningRates()
        saves = ModelCheckpoint(tmp_path / name, every_n_train_steps=4, save_top_k=-1, filename="{step}")
        trainer = L.Trainer(
            max_steps=max_steps, limit_val_batches=0, callbacks=[rates, saves], logger=False,
            enable_progress_bar=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return rates.rates

    first = fit("first", 10)  # linear: warm-up to 1e-3 at step 2, then down to 0 at step 10; saved at step 4
    assert first[4] == pytest.approx(1e-3 * 6 / 8)
    saved = tmp_path / "first" / "step=4.ckpt"

    # keep (the default, not named: the same call runs on a build without the setting): the recorded schedule,
    # as if uninterrupted up to step 10, then its final rate (0); and one warning that says so.
    recwarn.clear()
    keep = fit("keep", 20, saved)
    assert sorted(keep) == list(range(4, 20))
    assert [keep[s] for s in range(4, 20)] == pytest.approx([first[s] for s in range(4, 10)] + [0.0] * 10, abs=1e-12)
    notes = [str(w.message) for w in recwarn if "learning-rate schedule" in str(w.message)]
    assert_one_line(notes, "step 20", "step 10", "resume_schedule=keep", "rate 0", "resume_schedule=stretch", prefix="")

    # stretch: from the rate at step 4 (no jump), down to 0 at step 20 instead of 10.
    stretch = fit("stretch", 20, saved, resume_schedule="stretch")
    expected = [first[4] * (20 - s) / 16 for s in range(4, 20)]
    assert [stretch[s] for s in range(4, 20)] == pytest.approx(expected, abs=1e-12)
    assert "its remaining decay now ends at step 20, from the current rate without a jump" in caplog.text
    # Its checkpoints record the stretched schedule: resumed again with the same settings, it goes on unchanged.
    again = fit("again", 20, tmp_path / "stretch" / "step=12.ckpt")
    assert [again[s] for s in range(12, 20)] == pytest.approx(expected[8:], abs=1e-12)


def _mlm_batch(module: MLMModule, rows: int, length: int, seed: int, padded: bool = False) -> dict:
    from mlm_lightning.data.collator import MLMCollator

    collate = MLMCollator(
        pad_token_id=0, mask_token_id=4, vocab_size=module.hparams.vocab_size, special_token_ids=[0, 1, 2, 3, 4]
    )
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, module.hparams.vocab_size, (rows, length), generator=gen)
    cut = [length - 5 * (i % 2) if padded else length for i in range(rows)]  # every other row shorter
    return collate([{"input_ids": ids[i, : cut[i]].numpy(), "index": seed * rows + i} for i in range(rows)])


def test_masked_mean_loss_is_the_mean_cross_entropy_and_zero_without_masked_tokens() -> None:
    from mlm_lightning.model.head import masked_mean_loss

    torch.manual_seed(0)
    module = MLMModule(vocab_size=100, dropout=0.0, **TINY)
    batch = _mlm_batch(module, 4, 16, seed=1)
    loss = masked_mean_loss(module, batch)
    reference = F.cross_entropy(module.masked_logits(batch).float(), batch["masked_labels"])
    torch.testing.assert_close(loss, reference)
    (grad,) = torch.autograd.grad(loss, module.model.base_model.embeddings.word_embeddings.weight)
    (ref_grad,) = torch.autograd.grad(reference, module.model.base_model.embeddings.word_embeddings.weight)
    torch.testing.assert_close(grad, ref_grad)
    # A batch without masked tokens: loss 0 with gradients (zeros), not NaN, so the step needs no host check.
    empty = {**batch, "masked_positions": batch["masked_positions"][:0], "masked_labels": batch["masked_labels"][:0]}
    loss = masked_mean_loss(module, empty)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


def record_compiled_graphs(monkeypatch: pytest.MonkeyPatch) -> list[torch.fx.GraphModule]:
    """Makes ``torch.compile`` record each graph dynamo traces (and run it as traced); returns the list it fills."""
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        graphs.append(gm)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=record, **kw))
    return graphs


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_compiled_training_loss_is_one_graph_for_every_masked_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU with compile on, the whole loss is one graph: the masked count is symbolic, no graph breaks.

    Traced here on the CPU with dynamo and a backend that records the graphs and runs them as traced, with the
    path switched on as on a GPU.
    """
    from mlm_lightning.model.head import masked_mean_loss

    graphs = record_compiled_graphs(monkeypatch)
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = MLMModule(vocab_size=100, dropout=0.0, compile=True, **TINY)
    reference = MLMModule(vocab_size=100, dropout=0.0, **TINY)  # eager throughout, same weights
    reference.load_state_dict(module.state_dict())
    monkeypatch.setattr(CompilePolicy, "compiles_whole_loss", lambda self, *args: True)  # as on a GPU
    counts = set()
    for seed in range(4):
        batch = _mlm_batch(module, 4, 16, seed=seed)
        counts.add(batch["masked_positions"].numel())
        loss = module.train_loss(batch)
        torch.testing.assert_close(loss, masked_mean_loss(reference, batch))
        loss.backward()
    assert len(counts) > 1 and len(graphs) == 1, (counts, len(graphs))
    # Unpadded rows: SDPA gets no mask (so a GPU takes its fused kernels); padded rows: their mask.
    torch._dynamo.reset()
    graphs.clear()
    module.compilation.compiled.pop("loss")
    module.train_loss(_mlm_batch(module, 4, 16, seed=5)).backward()
    module.train_loss(_mlm_batch(module, 4, 16, seed=6, padded=True)).backward()
    sdpa = [
        [
            n.kwargs.get("attn_mask", n.args[3] if len(n.args) > 3 else None)
            for n in g.graph.nodes
            if "scaled_dot" in str(n.target)
        ]
        for g in graphs
    ]
    assert len(sdpa) == 2 and all(len(calls) == TINY["num_hidden_layers"] for calls in sdpa), sdpa
    assert all(mask is None for mask in sdpa[0]) and all(mask is not None for mask in sdpa[1])
    torch._dynamo.reset()


def test_adamw_is_fused_unless_a_gradient_scaler_is_in_use_with_clipping(
    dm: MLMDataModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision

    from mlm_lightning.training.optim import adamw_implementation

    def trainer(**kw: Any) -> L.Trainer:
        return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, **kw)

    choose = adamw_implementation
    assert choose("cuda", trainer(precision="bf16-mixed")) == {"fused": True}
    assert choose("cuda", trainer(precision="32-true", gradient_clip_val=1.0)) == {"fused": True}
    assert choose("cpu", trainer(precision="bf16-mixed")) == {"fused": True}
    assert choose("cpu", trainer(precision="32-true", gradient_clip_val=1.0)) == {"fused": True}  # 5x faster step
    # bf16 has no gradient scaler: clipping a fused optimizer's gradients is plain clipping (base.yaml on a bf16 CPU).
    assert choose("cpu", trainer(precision="bf16-mixed", gradient_clip_val=1.0)) == {"fused": True}
    # fp16 with a scaler (a GPU's 16-mixed): a fused step unscales after clipping would have run, so foreach.
    fp16 = MixedPrecision("16-mixed", "cuda", scaler=torch.amp.GradScaler("cpu"))
    assert choose("cuda", SimpleNamespace(precision_plugin=fp16, gradient_clip_val=1.0)) == {"foreach": True}
    assert choose("cuda", SimpleNamespace(precision_plugin=fp16, gradient_clip_val=None)) == {"fused": True}
    # bf16-mixed with clipping trains with fused AdamW (Lightning's own check raised at the first step), and the
    # gradients the optimizer steps with are clipped to the norm asked for.
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording_step(self: torch.optim.AdamW, closure: Any = None) -> Any:
        loss = closure()  # Lightning's closure: forward, backward and the gradient clipping
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        step(self)
        return loss

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    torch.manual_seed(0)
    module = MLMModule(vocab_size=dm.vocab_size, **TINY)
    run = trainer(precision="bf16-mixed", gradient_clip_val=0.01, max_steps=2, limit_val_batches=0)
    run.fit(module, datamodule=dm)
    assert module.trainer.global_step == 2
    assert run.optimizers[0].defaults["fused"] is True
    assert len(seen) == 2 and all(0.0099 < norm <= 0.0101 for norm in seen), seen  # unclipped norms are ~10


@pytest.mark.slow
def test_compiled_line_by_line_widths_compile_a_few_times_not_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With compile on, batches of 12 different widths run through at most COMPILE_WIDTHS + 1 graphs."""
    from types import SimpleNamespace

    from mlm_lightning.model.head import COMPILE_WIDTHS

    graphs = record_compiled_graphs(monkeypatch)
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = MLMModule(vocab_size=100, dropout=0.0, compile=True, **TINY)  # training mode: compiled on a CPU
    reference = MLMModule(vocab_size=100, dropout=0.0, **TINY)
    reference.load_state_dict(module.state_dict())
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(max_seq_length=64))
    widths = set()
    for seed, length in enumerate([9, 13, 17, 20, 26, 31, 33, 40, 47, 52, 58, 64]):
        batch = _mlm_batch(module, 3, length, seed=seed, padded=seed % 2 == 1)
        padded = module.compile_width(batch)
        widths.add(padded["input_ids"].shape[1])
        with torch.no_grad():  # the same logits at the same tokens as the unpadded batch, uncompiled
            torch.testing.assert_close(module.masked_logits(padded), reference.masked_logits(batch))
    assert widths == {16, 32, 48, 64}
    assert len(graphs) <= COMPILE_WIDTHS + 1, len(graphs)  # 64 with and without padding


def test_every_attribute_of_the_module_is_declared_in_init(dm: MLMDataModule) -> None:
    """A run adds no attribute of its own to the module: its state is what ``__init__`` declares (issue 21)."""
    from mlm_lightning.callbacks.throughput import Throughput
    from mlm_lightning.model import module as module_lib

    torch.manual_seed(0)
    module = MLMModule(vocab_size=dm.vocab_size, **TINY)
    declared = set(vars(module))
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Throughput()],
    )
    trainer.fit(module, datamodule=dm)
    trainer.validate(module, datamodule=dm, verbose=False)
    ours = {name for name in set(vars(module)) - declared if name not in vars(L.LightningModule())}
    assert not ours, ours
    assert "__dict__" not in Path(module_lib.__file__).read_text()
