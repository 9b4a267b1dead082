"""The probe's ``fine-tune`` mode: a sequence classifier on the model's encoder, trained with Lightning."""

from __future__ import annotations

import copy
from typing import Any, Protocol, cast

import lightning as L
import numpy as np
import torch

from mlm_lightning.errors import MLMError
from mlm_lightning.tools.probe_tasks import ProbeTask, Split


class FineTuneSettings(Protocol):
    """What fine-tuning reads of the probe's settings (:class:`mlm_lightning.tools.probe.ProbeSettings`)."""

    max_length: int
    batch_size: int
    epochs: int
    learning_rate: float


def _classifier(model: Any, num_classes: int) -> Any:
    """``AutoModelForSequenceClassification`` of the model's family with its encoder's weights (a new head)."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)
    config.num_labels = num_classes
    config.problem_type = "single_label_classification"
    try:
        clf = AutoModelForSequenceClassification.from_config(config)
    except ValueError as err:
        raise MLMError(
            f"transformers has no sequence-classification model for '{config.model_type}': use --mode linear"
        ) from err
    prefix = model.base_model_prefix
    own = getattr(clf, prefix, None)
    if own is None:
        raise MLMError(f"the classifier of '{config.model_type}' has no '{prefix}' encoder: use --mode linear")
    result = own.load_state_dict(getattr(model, prefix).state_dict(), strict=False)
    if result.unexpected_keys:
        raise MLMError(f"the encoder's weights do not fit the classifier ({result.unexpected_keys[0]}, ...)")
    return clf


def fine_tune_predictions(
    model: Any,
    tok: Any,
    task: ProbeTask,
    split: Split,
    settings: FineTuneSettings,
    trainer_settings: dict[str, Any],
) -> np.ndarray:
    """Fine-tunes a classifier on ``split.train`` (seeded by ``split.seed``) and predicts ``split.test``."""
    L.seed_everything(split.seed, verbose=False)  # the head's initial weights, dropout, batch order
    clf = _classifier(model, len(task.classes))
    encoded = tok([task.texts[i] for i in range(len(task.texts))], truncation=True, max_length=settings.max_length)

    def loader(rows: np.ndarray, shuffle: bool) -> Any:
        items = [{"input_ids": encoded["input_ids"][i], "label": int(task.labels[i])} for i in rows]

        def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
            padded = tok.pad([{"input_ids": b["input_ids"]} for b in batch], return_tensors="pt")
            return {**padded, "labels": torch.tensor([b["label"] for b in batch])}

        generator = torch.Generator().manual_seed(split.seed)
        return torch.utils.data.DataLoader(
            items,  # type: ignore[arg-type]  # a list is a map-style dataset (__getitem__, __len__); torch's stub says Dataset
            batch_size=settings.batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            generator=generator,
        )

    train = loader(split.train, shuffle=True)
    module = ClassifierModule(clf, settings.learning_rate, settings.epochs * len(train))
    trainer = L.Trainer(
        max_epochs=settings.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        devices=1,
        num_sanity_val_steps=0,
        **trainer_settings,
    )
    trainer.fit(module, train_dataloaders=train)
    batches = trainer.predict(module, dataloaders=loader(split.test, shuffle=False))
    return torch.cat(cast(list[torch.Tensor], batches)).numpy()  # predict_step gives one tensor per batch


class ClassifierModule(L.LightningModule):
    """A sequence classifier for ``fine-tune`` probes: AdamW, linear decay after a 10 % warm-up.

    Args:
        model: An ``AutoModelForSequenceClassification``.
        learning_rate: Peak learning rate.
        total_steps: Optimizer steps of the whole run (the decay reaches 0 there).
    """

    def __init__(self, model: Any, learning_rate: float, total_steps: int) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.total_steps = max(1, total_steps)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        return self.model(**batch).loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**batch).logits.argmax(-1).cpu()

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.learning_rate, weight_decay=0.01)
        warmup = max(1, self.total_steps // 10)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
