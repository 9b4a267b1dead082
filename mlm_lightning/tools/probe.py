"""``python -m mlm_lightning probe``: did adaptation help the task? Models scored on a small labelled set, side by side.

Every model (an export or any model folder, a ``fit`` checkpoint, a ``pkg://`` path or a hub name: as
``evaluate`` takes them) is trained and tested on the same splits with the same seeds and settings
(:mod:`mlm_lightning.tools.probe_tasks` reads the task and draws the splits), in one of two modes:

* ``linear`` (fast): the encoder frozen, each text's embedding is the mean of its last hidden states over its
  tokens; a multinomial logistic regression on the standardised embeddings, fitted by full-batch L-BFGS in
  float64 from zero weights (deterministic: the same split gives the same figures);
* ``fine-tune``: ``AutoModelForSequenceClassification`` with the model's encoder, trained on Lightning (the
  configuration's precision and accelerator) for a few epochs; the seed draws the new head and the batch order.

For each run (a seed, and a fold with ``folds``) accuracy and macro-F1 (torchmetrics) on the test rows; per
model their mean and standard deviation over the runs, and, paired run by run, the difference from the first
model with a 95 % Student-t interval. The first model is the reference: put the base model first.

This module holds the settings and the runs; :mod:`.probe_finetune` the ``fine-tune`` classifier,
:mod:`.probe_stats` the statistics, :mod:`.probe_table` the table and its files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlm_lightning.errors import MLMError
from mlm_lightning.tools.probe_finetune import fine_tune_predictions
from mlm_lightning.tools.probe_stats import scores, summarize
from mlm_lightning.tools.probe_tasks import GENRE_TASK, ProbeTask, Split, make_splits, read_task


@dataclass
class ProbeSettings:
    """The settings of a probe (``probe`` flags, and the ``probe`` section of a ``fit`` configuration).

    Attributes:
        task: A labelled ``.csv``/``.jsonl``/``.parquet`` file, or ``shakespeare-genre`` (the embedded task).
        test_file: A test file of the same columns; without it the task's rows are split.
        text_column: Column of the texts.
        label_column: Column of the labels (any values; each distinct value is a class).
        group_column: Column whose rows stay together on one side of a split (a document, a user); ``None``:
            every row alone. The embedded task groups by play.
        mode: ``linear`` (frozen encoder, logistic regression on mean-pooled embeddings) or ``fine-tune``.
        seeds: One run per seed (and fold): three or more for a spread and an interval.
        folds: Stratified folds (>= 2), drawn once with the first seed; 0: a held-out split per seed.
        test_fraction: Share of each class's groups held out per seed, without folds or a test file.
        passages_per_play: Speeches per play in the embedded task.
        max_length: Tokens per text (longer texts are cut).
        batch_size: Texts per batch (embedding and fine-tuning).
        l2: Regularisation of the logistic regression: scikit-learn's ``1/C`` (the penalty is ``l2/(2n)|W|^2``
            on the mean cross-entropy).
        epochs: Fine-tuning epochs.
        learning_rate: Fine-tuning peak learning rate (AdamW, linear decay after a 10 % warm-up).
    """

    task: str = GENRE_TASK
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    group_column: str | None = None
    mode: Literal["linear", "fine-tune"] = "linear"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    folds: int = 0
    test_fraction: float = 0.25
    passages_per_play: int = 12
    max_length: int = 128
    batch_size: int = 32
    l2: float = 1.0
    epochs: int = 3
    learning_rate: float = 5e-5

    def check(self) -> None:
        """Raises :class:`MLMError` for a value out of range."""
        rules = [
            (self.folds == 0 or self.folds >= 2, "folds must be 0 (a held-out split) or >= 2"),
            (0 < self.test_fraction < 1, "test_fraction must be between 0 and 1"),
            (len(set(self.seeds)) == len(self.seeds) and self.seeds, "seeds must be distinct, at least one"),
            (self.passages_per_play >= 1, "passages_per_play must be >= 1"),
            (self.max_length >= 8, "max_length must be >= 8"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.l2 > 0, "l2 must be > 0"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
        ]
        for ok, text in rules:
            if not ok:
                raise MLMError(f"probe: {text}")

    def load(self) -> tuple[ProbeTask, list[Split]]:
        """The task and its splits, checked (before any model is loaded)."""
        self.check()
        task = read_task(
            self.task, self.test_file, self.text_column, self.label_column, self.group_column, self.passages_per_play
        )
        return task, make_splits(task, list(self.seeds), self.folds, self.test_fraction)


# -- models -------------------------------------------------------------------------------------------------------
def load_encoder(name: str, tokenizer: str | None = None) -> tuple[Any, Any]:
    """``(masked LM in eval mode, tokenizer)`` of a model as ``evaluate`` loads it, with its encoder checked.

    Args:
        name: Export or model folder, ``fit`` checkpoint, ``pkg://`` path or hub name.
        tokenizer: Another tokenizer to read with; it must be the model's (same vocabulary and special tokens).

    Raises:
        MLMError: The model cannot be loaded or has no encoder, or the tokenizer is not the model's.
    """
    from mlm_lightning import family_config
    from mlm_lightning.data.tokenizer import bundled_tokenizer, load_tokenizer
    from mlm_lightning.model.tokenizer_match import DECISIVE, vocabulary_difference
    from mlm_lightning.tools.export import load_model

    model, own_name = load_model(name, head_warning=False)
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if encoder is None or encoder is model:
        raise MLMError(f"model '{name}' has no encoder ({type(model).__name__}): probe needs an encoder model")
    tok = load_tokenizer(tokenizer or own_name, setting="--tokenizer")
    if tokenizer:
        own = bundled_tokenizer(own_name) if own_name != name or Path(name).is_dir() else None
        if own is None and own_name != name:  # a checkpoint: the tokenizer it records
            own = load_tokenizer(own_name)
        difference = vocabulary_difference(own, tok) if own is not None else None
        ids = family_config.special_token_ids(tok)
        for field_name in DECISIVE if difference is None else ():
            recorded, given = getattr(model.config, field_name, None), family_config.token_id_for(field_name, ids)
            if isinstance(recorded, int) and given is not None and recorded != given:
                difference = f"has {field_name} {recorded}, --tokenizer {given}"
        if difference:
            difference = difference.replace("data.tokenizer", "--tokenizer")
            raise MLMError(f"--tokenizer {tokenizer} is not the tokenizer of model '{name}': the model {difference}")
    if len(tok) > model.get_input_embeddings().num_embeddings:
        raise MLMError(
            f"tokenizer of model '{name}' has {len(tok)} tokens but the model only "
            f"{model.get_input_embeddings().num_embeddings}: it is not the model's tokenizer"
        )
    return model, tok


def _device(accelerator: str) -> str:
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def embed(model: Any, tok: Any, texts: list[str], max_length: int, batch_size: int, precision: str, device: str) -> Any:
    """Mean-pooled last hidden states of ``texts`` (float32, one row per text), the encoder in eval mode."""
    import torch

    from mlm_lightning.families import encoder_inputs

    encoder = getattr(model, model.base_model_prefix).eval().to(device)
    bf16 = precision.startswith("bf16")
    out = []
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(texts), batch_size):
            batch = tok(texts[start : start + batch_size], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")  # fmt: skip
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            hidden = encoder(**encoder_inputs(model, ids, mask)).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            out.append(((hidden * weights).sum(1) / weights.sum(1).clamp_min(1)).cpu())
    return torch.cat(out)


def logistic_regression(features: Any, labels: Any, num_classes: int, l2: float = 1.0, max_iter: int = 500) -> Any:
    """A multinomial logistic regression fitted by full-batch L-BFGS (float64, zero start): returns ``predict``.

    The features are standardised with the training rows' mean and standard deviation; the penalty is
    ``l2 / (2 n) * |W|^2`` on the mean cross-entropy (scikit-learn's ``C = 1 / l2``), the bias unpenalised.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
    xs = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> Any:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ weight + bias, y) + l2 / (2 * len(y)) * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight, bias = weight.detach(), bias.detach()

    def predict(new: Any) -> np.ndarray:
        z = (torch.as_tensor(new, dtype=torch.float64) - mean) / std
        return (z @ weight + bias).argmax(1).numpy()

    return predict


def probe_model(
    model: Any,
    tok: Any,
    task: ProbeTask,
    splits: list[Split],
    settings: ProbeSettings,
    trainer_settings: dict[str, Any],
) -> list[dict[str, float]]:
    """One model's figures for every split, in the splits' order."""
    precision = str(trainer_settings.get("precision", "32-true"))
    runs = []
    if settings.mode == "linear":
        device = _device(str(trainer_settings.get("accelerator", "auto")))
        x = embed(model, tok, task.texts, settings.max_length, settings.batch_size, precision, device)
        for split in splits:
            predict = logistic_regression(x[split.train], task.labels[split.train], len(task.classes), settings.l2)
            runs.append(scores(predict(x[split.test]), task.labels[split.test], len(task.classes)))
        return runs
    for split in splits:
        preds = fine_tune_predictions(model, tok, task, split, settings, trainer_settings)
        runs.append(scores(preds, task.labels[split.test], len(task.classes)))
    return runs


def trainer_settings_of(config: Any | None) -> dict[str, Any]:
    """Accelerator and precision for the probe: the configuration's (precision unset: the project's default)."""
    from mlm_lightning.training.precision import default_precision

    trainer = config.trainer if config is not None else {}
    accelerator = trainer.get("accelerator") or "auto"
    precision = trainer.get("precision") or default_precision(accelerator)[0]
    return {"accelerator": accelerator, "precision": precision}


def run_probe(
    models: list[tuple[str, Any]],
    settings: ProbeSettings,
    trainer_settings: dict[str, Any],
    task: ProbeTask | None = None,
    splits: list[Split] | None = None,
) -> list[dict[str, Any]]:
    """The table's rows for ``models``: ``(name, loader)`` pairs, ``loader()`` giving ``(masked LM, tokenizer)``.

    Models are loaded one at a time (and let go after their runs), so two never take memory together.
    """
    if task is None or splits is None:
        task, splits = settings.load()
    runs = []
    for _, load in models:
        model, tok = load()
        runs.append(probe_model(model, tok, task, splits, settings, trainer_settings))
        del model
    return summarize([name for name, _ in models], runs, settings.mode)
