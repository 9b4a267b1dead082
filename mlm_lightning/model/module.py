"""``MLMModule``: a masked-language model (``BertForMaskedLM`` or any ``AutoModelForMaskedLM``) in Lightning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import AttributeDict, rank_zero_info
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.optim import Optimizer

from mlm_lightning import families
from mlm_lightning.data.collator import MLMBatch
from mlm_lightning.families import max_sequence_length
from mlm_lightning.io.checkpoint_io import CHECKPOINT_FORMAT
from mlm_lightning.model.base_head import BaseHead
from mlm_lightning.model.build import build_network, check_max_seq_length
from mlm_lightning.model.compilation import CompilePolicy
from mlm_lightning.model.head import Head, compile_width, masked_logits, masked_mean_loss, position_wise_head
from mlm_lightning.model.sharding import fill_auto_wrap_policy
from mlm_lightning.settings import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveInt, ShareBelowOne
from mlm_lightning.training.gradients import clip_without_scaler, log_grad_norm
from mlm_lightning.training.metrics import SplitMetrics, log_epoch_metrics
from mlm_lightning.training.optim import adamw_implementation, build_adamw
from mlm_lightning.training.schedule import Plan, PlannedLR, ScheduleSettings, plan_schedule, total_optimizer_steps


class MLMModule(L.LightningModule):
    """Masked-language-model training with AdamW, warm-up and decay, and token-weighted metrics.

    Every argument is a plain value, so ``MLMModule.load_from_checkpoint(path)`` rebuilds the module from the
    checkpoint alone for a model built from scratch; one that started from ``model_name_or_path`` loads that model
    again first (it must still be reachable), then takes the checkpoint's weights.

    Args:
        model_name_or_path: Pretrained masked LM: a hub name (needs network), a local folder, or
            ``pkg://package/path``. ``None`` builds a new model from the architecture settings below.
        tokenizer_name_or_path: Tokenizer that goes with the model (filled in from the data module;
            recorded so exports and fill-mask find it).
        vocab_size: Vocabulary size (filled in from the tokenizer by the command line).
        model_type: Architecture for a new model (any ``transformers`` masked-LM type, e.g. ``bert``).
        hidden_size: Width of a new model.
        num_hidden_layers: Transformer layers of a new model.
        num_attention_heads: Attention heads of a new model.
        intermediate_size: Feed-forward width of a new model.
        max_position_embeddings: Longest sequence a new model takes.
        dropout: Hidden and attention dropout of a new model.
        attention_dropout: Dropout on the attention probabilities, of a pretrained model too; ``None`` keeps the
            pretrained model's own (or ``dropout`` for a new one). With 0, PyTorch's fused attention kernels run
            in training (with dropout they do not on a CPU): a faster step, less memory (``benchmarks/README.md``).
        pad_token_id: Padding id of a new model (filled in from the tokenizer by the command line).
        special_token_ids: The tokenizer's special-token ids by config field name (``cls_token_id``, ``bos_token_id``,
            ..., filled in by the command line): a new model's config takes them where it has the field.
        embedding_size: Embedding width of a new model of a factorised-embedding family (ALBERT, ELECTRA,
            ConvBERT, MobileBERT, RoFormer, SqueezeBERT); ``None`` is ``hidden_size``.
        config_overrides: Extra fields of a new model's ``transformers`` config, by that config's own names, e.g.
            DeBERTa-v3's relative attention (``{relative_attention: true, position_buckets: 256, ...}``); plain
            JSON values. Not for fields a setting above or the tokenizer decides, nor for a pretrained model.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (never applied to biases and normalisation weights).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: Linear warm-up length in optimizer steps; if 0, ``warmup_ratio`` of all steps.
        warmup_ratio: Warm-up as a share of all optimizer steps (used when ``warmup_steps`` is 0).
        scheduler: Decay after warm-up: ``linear`` or ``cosine`` to zero, ``constant``, or ``wsd``
            (warmup-stable-decay: the peak rate until the last ``decay_ratio`` of the steps, then a 1-sqrt decay to
            zero, as ModernBERT and mmBERT train; transformers' ``get_wsd_schedule``). The rate is a function of
            the step alone.
        decay_ratio: With ``scheduler: wsd``: the share of all optimizer steps in the final decay (at most what
            the warm-up leaves).
        full_logits: Compute vocabulary logits at every position instead of only the masked ones (slower;
            families whose MLM head cannot be applied to a subset of positions do this anyway).
        compile: ``torch.compile`` what runs (the encoder, on a GPU the whole training loss; the whole model with
            full logits); the first steps pay the compilation. ``None``: on for a CPU with a C++ compiler (``$CXX``
            or ``g++``), off on a GPU, said in one line; ``true`` on a CPU without one stops the run before it
            starts. On a CPU evaluation runs uncompiled (:mod:`mlm_lightning.model.compilation`).
        pad_vocab_multiple: Round the embedding and output vocabulary up to this multiple (64 suits GPU
            matrix units; the extra rows are never a target). 1 keeps the tokenizer's size.
        resume_schedule: When a resumed run ends at another step than the checkpoint's learning-rate schedule
            (``max_steps`` or ``max_epochs`` changed): ``keep`` the recorded schedule (steps past its end run at its
            final rate), or ``stretch`` its remaining decay from the current rate to the new end. Said in a log
            line either way.
        base_head: ``auto``: the packaged MiniLM, which ships without an MLM head, starts from the head trained for
            it on general English (docs/models.md), matched by its weights' digest; ``none``: a random head.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tokenizer_name_or_path: str | None = None,
        vocab_size: PositiveInt = 30522,
        model_type: str = "bert",
        hidden_size: PositiveInt = 256,
        num_hidden_layers: PositiveInt = 4,
        num_attention_heads: PositiveInt = 4,
        intermediate_size: PositiveInt = 1024,
        max_position_embeddings: PositiveInt = 512,
        dropout: ShareBelowOne = 0.1,
        attention_dropout: ShareBelowOne | None = None,
        pad_token_id: NonNegativeInt = 0,
        embedding_size: PositiveInt | None = None,
        special_token_ids: dict[str, int] | None = None,
        config_overrides: dict[str, Any] | None = None,
        learning_rate: NonNegativeFloat = 5e-5,
        weight_decay: NonNegativeFloat = 0.01,
        betas: tuple[ShareBelowOne, ShareBelowOne] = (0.9, 0.999),
        eps: NonNegativeFloat = 1e-8,
        warmup_steps: NonNegativeInt = 0,
        warmup_ratio: ClosedUnitInterval = 0.06,
        scheduler: Literal["linear", "cosine", "constant", "wsd"] = "linear",
        decay_ratio: ClosedUnitInterval = 0.2,
        full_logits: bool = False,
        compile: bool | None = False,
        pad_vocab_multiple: PositiveInt = 1,
        resume_schedule: Literal["keep", "stretch"] = "keep",
        base_head: BaseHead = "auto",
    ) -> None:
        super().__init__()
        # resume_schedule is each run's choice, not the model's: out of the checkpoint, so a resume takes the given one.
        self.save_hyperparameters(ignore=["resume_schedule"])
        self.resume_schedule = resume_schedule
        self.model = build_network(self.hparams)
        self.compilation = CompilePolicy(compile)  # what torch.compile runs; kept out of the module tree
        self.eval_metrics = SplitMetrics()  # token-weighted, one set per evaluation split; not in checkpoints
        self._val_prefixes = ["val"]  # the metric prefix of each validation dataloader, by dataloader_idx
        self.eval_counts: dict[str, dict[str, int]] = {}  # prefix -> masked tokens (and words) of its last run
        self._said_full_logits = False  # the family's head needs every position: said once
        self._schedule: Plan | None = None  # the learning-rate schedule in use (recorded in checkpoints)
        self._resumed: tuple[dict[str, Any] | None, int] | None = None  # (its record, step) in the resumed checkpoint

    # -- model ------------------------------------------------------------------------------------------
    @property
    def max_positions(self) -> int:
        """Longest row the model takes, in tokens (:func:`max_sequence_length` of its configuration)."""
        return max_sequence_length(self.model.config.to_dict())

    def mlm_head(self) -> Head | None:
        """The function mapping hidden states to vocabulary logits, if the family's head is position-wise."""
        head, why = position_wise_head(self.model, cast(AttributeDict, self.hparams).full_logits)
        if why and not self._said_full_logits:
            model_type = self.model.config.model_type
            rank_zero_info(f"model_type={model_type}: vocabulary logits at every position, because {why}")
            self._said_full_logits = True
        return head

    def encoder(self, whole_model: bool = False) -> Any:
        """The encoder (or, for full logits, the whole model) as it runs: compiled where :attr:`compilation` says."""
        if not self.compilation.runs_compiled(self.training, self.device.type):
            return self.model if whole_model else self.model.base_model
        return self.compilation.network(self.model, whole_model)

    def masked_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Vocabulary logits at the masked positions only, shape (masked tokens, vocab)."""
        head = self.mlm_head()
        return masked_logits(self.model, batch, head, self.encoder(whole_model=head is None))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full-sequence vocabulary logits, shape (batch, length, vocab); the mask where the family takes one."""
        return self.model(**families.encoder_inputs(self.model, input_ids, attention_mask)).logits

    def compile_width(self, batch: MLMBatch) -> MLMBatch:
        """``batch`` padded to one of a few fixed widths where it runs compiled (:func:`~.head.compile_width`)."""
        if not self.compilation.runs_compiled(self.training, self.device.type):
            return batch
        longest = getattr(self.trainer.datamodule, "max_seq_length", None) if self._trainer is not None else None  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        return cast(MLMBatch, compile_width(cast(dict[str, Any], batch), longest, self.model.config.pad_token_id or 0))

    # -- steps ------------------------------------------------------------------------------------------
    def train_loss(self, batch: MLMBatch) -> torch.Tensor:
        """The training loss: mean cross-entropy over the masked positions (0, with gradients, if there are none).

        One compiled graph (the masked count symbolic) where :meth:`.CompilePolicy.compiles_whole_loss` says so.
        """
        if not self.compilation.compiles_whole_loss(self.device.type, self.mlm_head() is not None):
            return masked_mean_loss(self, batch)
        return self.compilation.whole_loss(masked_mean_loss, self.encoder, batch)(self, batch)

    def _shared_step(self, batch: MLMBatch, stage: str) -> torch.Tensor:
        """The training loss, or an evaluation batch's metric updates (``stage``: ``val``, ``val/<name>``, ``test``)."""
        batch = self.compile_width(batch)
        labels = batch["masked_labels"]
        if stage == "train":
            loss = self.train_loss(batch)
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=labels.numel())
            return loss
        logits = self.masked_logits(batch).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        self.eval_metrics.split(stage).add(batch, logits, losses)
        return losses.sum()

    def training_step(self, batch: MLMBatch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: MLMBatch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._shared_step(batch, self._val_prefixes[dataloader_idx])

    def test_step(self, batch: MLMBatch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: MLMBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Top-1 predictions at the masked positions, with their labels and per-token losses."""
        labels, positions = batch["masked_labels"], batch["masked_positions"]  # of the batch as given, not widened
        logits = self.masked_logits(self.compile_width(batch)).float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        return {"positions": positions, "labels": labels, "predictions": logits.argmax(-1), "losses": losses}

    @property
    def val_prefixes(self) -> list[str]:
        """The metric prefix of each validation set: ``val``, or ``val/<name>`` for each named set, in order."""
        return list(self._val_prefixes)

    def on_validation_epoch_end(self) -> None:
        for prefix in self._val_prefixes:  # the progress bar has room for one set: the first
            shown = prefix == self._val_prefixes[0]
            log_epoch_metrics(self, self.eval_metrics.split(prefix), prefix, shown, self.eval_counts)

    def on_test_epoch_end(self) -> None:
        log_epoch_metrics(self, self.eval_metrics.split("test"), "test", False, self.eval_counts)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        log_grad_norm(self, self.model)  # before clipping

    def configure_gradient_clipping(
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clips as Lightning does, and a fused optimizer's gradients where no gradient scaler is in use
        (:func:`~mlm_lightning.training.gradients.clip_without_scaler`: bf16 runs that clip keep fused AdamW)."""
        if not clip_without_scaler(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What `export` needs without the original model source or the YAML: architecture and latest validation.
        metrics = self.trainer.callback_metrics
        # update(): callbacks add their own records here too (ValidateBeforeFit's base_metrics).
        checkpoint.setdefault("mlm_lightning", {}).update(
            format=CHECKPOINT_FORMAT,  # checkpoint_io.checkpoint_format: what reads it checks it
            model_config=self.model.config.to_dict(),
            val_metrics={k: float(v) for k, v in metrics.items() if k.startswith("val/")},
        )
        if self._schedule is not None:
            checkpoint["mlm_lightning"]["schedule"] = self._schedule.record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get("mlm_lightning", {}).get("schedule")
        self._resumed = (record, int(checkpoint.get("global_step", 0)))
        # FSDP and DeepSpeed restore after configure_optimizers: their scheduler takes the resumed plan before its
        # state is restored (PlannedLR then writes that plan's rate at the checkpoint's step).
        if self._trainer is not None and self.trainer.lr_scheduler_configs:
            self._schedule = self._plan_schedule()
            for config in self.trainer.lr_scheduler_configs:
                if isinstance(config.scheduler, PlannedLR):
                    config.scheduler.plan = self._schedule

    # -- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hp = cast(AttributeDict, self.hparams)
        impl = adamw_implementation(self.device.type, self.trainer)
        optimizer = build_adamw(self.model, hp.learning_rate, hp.weight_decay, hp.betas, hp.eps, impl)
        # Its plan is recorded in checkpoints: a resumed run continues the same schedule (see resume_schedule).
        self._schedule = self._plan_schedule()
        schedule = PlannedLR(optimizer, self._schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}

    def _plan_schedule(self) -> Plan:
        """The schedule of this run: a new one, or a resumed checkpoint's, kept or stretched to this run's end."""
        settings = ScheduleSettings.of(self.hparams, self.resume_schedule)
        return plan_schedule(settings, total_optimizer_steps(self.trainer), *(self._resumed or (None, 0)))

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        check_max_seq_length(self.model, getattr(dm, "max_seq_length", None))
        if self._trainer is not None:  # before the strategy wraps the model: FSDP units are its own layers
            fill_auto_wrap_policy(self.trainer.strategy, self.model)
            self.compilation.decide(self.trainer.strategy.root_device.type, stage)
        # One metric set per validation set of the data (before Lightning moves the module to its device).
        self._val_prefixes = list(getattr(dm, "val_splits", None) or ["val"])
        self.eval_metrics.add_splits(self._val_prefixes)
