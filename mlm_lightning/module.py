"""``MLMModule``: a masked-language model (``BertForMaskedLM`` or any ``AutoModelForMaskedLM``) in Lightning."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import grad_norm, rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from mlm_lightning import families
from mlm_lightning.base_head import BaseHead
from mlm_lightning.checkpoint_io import CHECKPOINT_FORMAT
from mlm_lightning.compilation import check_can_compile, default_compile
from mlm_lightning.errors import MLMError
from mlm_lightning.families import max_sequence_length
from mlm_lightning.flops import (
    CPU_PEAK_ENV,
    EncoderShape,
    batch_token_counts,
    compute_dtype,
    given_cpu_peak,
    peak_cache_path,
    peak_flops,
    training_flops,
)
from mlm_lightning.loading import load_masked_lm, load_model_config
from mlm_lightning.masking import IGNORE_INDEX, MLMBatch
from mlm_lightning.settings import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveInt, ShareBelowOne
from mlm_lightning.sharding import fill_auto_wrap_policy
from mlm_lightning.tokenizer_match import check_tokenizer_matches


def _lr_multiplier(
    step: float, base: Callable[[float], float], stretches: tuple[tuple[int, int, int], ...], end: int
) -> float:
    """A schedule's multiplier at ``step``: ``base`` held at its value at ``end``, through resumes' stretches.

    A stretch ``(anchor, old_end, new_end)`` maps steps after ``anchor`` linearly so that ``new_end`` lands on
    ``old_end``: the schedule is unchanged up to ``anchor`` (no jump) and its remaining decay ends at ``new_end``.
    """
    s = float(min(step, end))
    for anchor, old_end, new_end in reversed(stretches):
        if s > anchor:
            s = anchor + (s - anchor) * (old_end - anchor) / (new_end - anchor)
    return base(s)


@dataclass(frozen=True)
class Architecture:
    """The shape of a model built from scratch, in the family-neutral names of ``MLMModule``'s settings.

    ``families.config_kwargs`` puts each under the family's own config name. ``vocab_size`` is also the
    tokenizer's size that a pretrained model's embeddings must cover.
    """

    vocab_size: int
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    dropout: float
    pad_token_id: int
    embedding_size: int | None = None
    special_token_ids: dict[str, int] | None = None  # the tokenizer's, by config field name (families.TOKEN_ROLES)
    config_overrides: dict[str, Any] | None = None  # further fields of a new model's config, by their own names


def build_model(
    architecture: Architecture,
    model_name_or_path: str | None = None,
    tokenizer_name_or_path: str | None = None,
    attention_dropout: float | None = None,
    base_head: BaseHead = "auto",
) -> nn.Module:
    """Loads the pretrained masked LM ``model_name_or_path``, or builds a new one of ``architecture``.

    A pretrained model keeps its own architecture; its embeddings are checked to cover ``vocab_size``, and the
    tokenizer (``tokenizer_name_or_path``, ``architecture.special_token_ids``) to be its own
    (:func:`mlm_lightning.tokenizer_match.check_tokenizer_matches`).
    A new one takes the tokenizer's special-token ids (``architecture.special_token_ids``) where its config has
    the field, and ``architecture.config_overrides`` (which a pretrained model does not take: an error).
    ``attention_dropout`` (``None``: the model's own, or ``architecture.dropout`` for a new one) replaces the
    attention dropout either way. ``base_head``: see :class:`MLMModule`.
    """
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, AutoModelForMaskedLM

    vocab_size = architecture.vocab_size
    if model_name_or_path and architecture.config_overrides:
        raise MLMError(
            f"model.config_overrides builds a new model only, but model.model_name_or_path={model_name_or_path} "
            f"is a pretrained one with its own config: leave model.config_overrides unset"
        )
    if model_name_or_path:
        overrides = None
        if attention_dropout is not None:
            overrides = families.attention_dropout_kwargs(load_model_config(model_name_or_path), attention_dropout)
        model = load_masked_lm(model_name_or_path, for_training=True, config_overrides=overrides, base_head=base_head)
        if vocab_size > model.config.vocab_size:
            raise MLMError(
                f"the tokenizer has {vocab_size} tokens but model '{model_name_or_path}' has embeddings for "
                f"only {model.config.vocab_size}: use the model's own tokenizer (leave data.tokenizer unset)"
            )
        check_tokenizer_matches(
            model_name_or_path, model.config, tokenizer_name_or_path, architecture.special_token_ids
        )
        return model
    apart = ("embedding_size", "special_token_ids", "config_overrides")
    settings = {f.name: getattr(architecture, f.name) for f in fields(architecture) if f.name not in apart}
    model_type = settings.pop("model_type")
    kwargs = families.config_kwargs(
        model_type, settings, architecture.embedding_size, architecture.special_token_ids, architecture.config_overrides
    )
    if attention_dropout is not None:
        declared = AutoConfig.for_model(model_type, **kwargs).to_dict()
        kwargs.update(families.attention_dropout_kwargs(declared, attention_dropout))
    try:
        return AutoModelForMaskedLM.from_config(AutoConfig.for_model(model_type, **kwargs))
    # The family's own validation, e.g. heads not dividing the width, or a config_overrides value of the wrong type.
    except (ValueError, TypeError, StrictDataclassError) as err:
        err_line = " ".join(str(err).split())
        raise MLMError(f"cannot build a new {model_type} model from these settings: {err_line}") from err


class MLMModule(L.LightningModule):
    """Masked-language-model training with AdamW, warm-up and decay, and token-weighted metrics.

    Every argument is a plain value, so ``MLMModule.load_from_checkpoint(path)`` rebuilds the model alone.

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
            in training (with dropout they do not on a CPU): on ``base.yaml`` a faster step and a lower peak memory
            (``benchmarks/README.md``).
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
        compile: ``torch.compile`` what runs: the encoder (masked-only head; on a GPU the whole training loss,
            static shapes but the masked count) or the whole model (full logits); the first steps pay the
            compilation. ``None``: on for a CPU with a C++ compiler (``$CXX`` or ``g++``; a ``base.yaml`` step 25 %
            shorter in bf16), off on a GPU (its ~40 s pay only in long runs); said in one line. ``true`` on a CPU
            without a C++ compiler stops the run before it starts. On a CPU evaluation runs uncompiled (no faster
            compiled; each batch shape would compile).
        pad_vocab_multiple: Round the embedding and output vocabulary up to this multiple (64 suits GPU
            matrix units; the extra rows are never a target). 1 keeps the tokenizer's size.
        resume_schedule: When a resumed run ends at another step than the checkpoint's learning-rate schedule
            (``max_steps`` or ``max_epochs`` changed): ``keep`` the recorded schedule (steps past its end run at its
            final rate), or ``stretch`` its remaining decay from the current rate to the new end. Said in a log
            line either way.
        base_head: A pretrained model whose files lack the MLM head: ``auto`` starts the packaged MiniLM (matched
            by its weights' digest, not its name) from the head trained on general English that ships with
            mlm-lightning, so step 0 is a real base model (``docs/models.md``); ``none``, or any other encoder:
            a random head.
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
        # resume_schedule is a choice of each run, not a property of the model: kept out of the checkpoint's
        # hyperparameters, so a resumed run takes the value it is given, not the one the checkpoint was saved with.
        self.save_hyperparameters(ignore=["resume_schedule"])
        self.resume_schedule = resume_schedule
        if not model_name_or_path and hidden_size % num_attention_heads:
            raise MLMError(
                f"model.hidden_size={hidden_size} is not a multiple of model.num_attention_heads={num_attention_heads}"
            )
        if not model_name_or_path and pad_token_id >= vocab_size:
            raise MLMError(f"model.pad_token_id={pad_token_id} is not below the vocabulary size {vocab_size}")
        architecture = Architecture(
            vocab_size=vocab_size,
            model_type=model_type,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            dropout=dropout,
            pad_token_id=pad_token_id,
            embedding_size=embedding_size,
            special_token_ids=special_token_ids,
            config_overrides=config_overrides,
        )
        self.model = build_model(architecture, model_name_or_path, tokenizer_name_or_path, attention_dropout, base_head)
        if pad_vocab_multiple > 1 and self.model.config.vocab_size % pad_vocab_multiple:
            self.model.resize_token_embeddings(
                self.model.config.vocab_size, pad_to_multiple_of=pad_vocab_multiple, mean_resizing=False
            )
        # One set of token-weighted metrics per evaluation split ("val", "test"; "val/<name>" for each named
        # validation set, added in setup once the data module is known). Their states are not saved in checkpoints.
        self.eval_metrics = nn.ModuleDict({"val": EvalMetrics(), "test": EvalMetrics()})
        self._val_prefixes = ["val"]  # the metric prefix of each validation dataloader, by dataloader_idx
        self.eval_counts: dict[str, dict[str, int]] = {}  # prefix -> masked tokens (and words) of its last run
        self._tokens_seen = 0
        self._flops_seen = 0
        self._last_time: float | None = None
        self._peak_flops: float | None = None
        self._schedule: dict[str, Any] | None = None  # the learning-rate schedule in use (saved in checkpoints)
        self._resumed: tuple[dict[str, Any] | None, int] | None = None  # (its record, step) in the resumed checkpoint

    # -- model ------------------------------------------------------------------------------------------
    @property
    def max_positions(self) -> int:
        """Longest row the model takes, in tokens (:func:`max_sequence_length` of its configuration)."""
        return max_sequence_length(self.model.config.to_dict())

    def _mlm_head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The function mapping hidden states to vocabulary logits, if the family's head is position-wise."""
        if self.hparams.full_logits:
            return None
        # Looked up on every call (a dict lookup), so copies of the module never use a stale model's head.
        head = families.masked_head(self.model)
        if isinstance(head, str):
            if not self.__dict__.get("_said_full_logits"):  # once per module
                rank_zero_info(
                    f"model_type={self.model.config.model_type}: vocabulary logits at every position, because {head}"
                )
                self.__dict__["_said_full_logits"] = True
            return None
        return head

    def masked_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Vocabulary logits at the masked positions only, shape (masked tokens, vocab)."""
        inputs = families.encoder_inputs(self.model, batch["input_ids"], batch.get("attention_mask"))
        positions = batch["masked_positions"]
        head = self._mlm_head()
        if head is None:
            logits = self._encoder(whole_model=True)(**inputs).logits
            return logits.flatten(0, 1).index_select(0, positions)
        hidden = self._encoder()(**inputs)[0].flatten(0, 1)
        # Most of a small model's work is the vocabulary projection: apply it to ~15% of positions only.
        count = positions.numel()
        if hidden.device.type == "cpu" and count % HEAD_ROWS_MULTIPLE:
            # PyTorch's CPU matrix products (oneDNN, bf16) cache a kernel per shape, up to 1,024 of them: with the
            # masked count changing every batch, base.yaml's trainer grew by about 3 MB a step (0.8 GB over 300
            # steps) and built a kernel a step. Padded rows (copies of row 0) give a few shapes; cut off at once.
            positions = F.pad(positions, (0, HEAD_ROWS_MULTIPLE - count % HEAD_ROWS_MULTIPLE))
            return head(hidden.index_select(0, positions))[:count]
        return head(hidden.index_select(0, positions))

    def _encoder(self, whole_model: bool = False) -> nn.Module:
        """The encoder (or, for full logits, the whole model), compiled when ``compile`` is on (on a CPU: training)."""
        if not self._runs_compiled():
            return self.model if whole_model else self.model.base_model
        key = "_compiled_model" if whole_model else "_compiled_encoder"
        encoder = self.__dict__.get(key)
        if encoder is None:
            encoder = self.model if whole_model else self.model.base_model
            skip_mask_of_unpadded_batches()
            encoder = torch.compile(encoder, dynamic=False)
            # Kept out of the module tree, so the state dict has no second copy of the weights.
            self.__dict__[key] = encoder
        return encoder

    @property
    def compiles(self) -> bool:
        """Whether ``torch.compile`` runs the model: ``compile``, or where it is ``None``, the rule of
        :func:`~mlm_lightning.compilation.default_compile` for the run's device (decided in ``setup``; off before)."""
        decided = self.__dict__.get("_compiles")
        return bool(self.hparams.compile) if decided is None else decided

    def _runs_compiled(self) -> bool:
        # On a CPU evaluation runs eagerly: compiled, a base.yaml batch of 64 took 0.77 s against 0.80 (bf16), and
        # each batch shape (64, and each validation set's shorter last batch) compiled for about 9 s.
        return self.compiles and (self.training or self.device.type != "cpu")

    def decide_compile(self, device_type: str, stage: str = "fit") -> None:
        """Settles :attr:`compiles` for a ``stage`` run on ``device_type``; :class:`MLMError` where it cannot compile.

        Said in one line when ``compile`` is ``None`` and the run trains (on a CPU only training compiles).
        """
        decided = self.hparams.compile
        if decided is None:
            decided, why = default_compile(device_type)
            if stage == "fit" and not self.__dict__.get("_said_compile"):  # once (validate before fit sets up too)
                rank_zero_info(f"model.compile: {str(decided).lower()} ({why}; set it to choose)")
                self.__dict__["_said_compile"] = True
        if decided and (stage == "fit" or device_type != "cpu"):
            check_can_compile(device_type)
        self.__dict__["_compiles"] = decided

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full-sequence vocabulary logits, shape (batch, length, vocab).

        The attention mask goes where the family takes one (``families.encoder_inputs``: not FNet, which mixes
        every position, padding included, and whose forward would swallow the mask unused).
        """
        return self.model(**families.encoder_inputs(self.model, input_ids, attention_mask)).logits

    def compile_width(self, batch: MLMBatch) -> MLMBatch:
        """``batch`` padded to one of a few fixed widths when ``compile`` is on (:func:`pad_to_compile_width`).

        Compiled code is specialised to its input shapes (``dynamic=False``): line_by_line batches, as wide as their
        longest row, would compile again for every new width (and past torch's recompile limit silently run
        uncompiled). Called by the step methods (Lightning's batch-transfer hooks would warn on every run that the
        data module has them too).
        """
        if not self._runs_compiled():
            return batch
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        longest = getattr(dm, "max_seq_length", None)
        if not longest:
            return batch
        return pad_to_compile_width(batch, int(longest), self.model.config.pad_token_id or 0)

    # -- steps ------------------------------------------------------------------------------------------
    def train_loss(self, batch: MLMBatch) -> torch.Tensor:
        """The training loss: mean cross-entropy over the masked positions (0, with gradients, if there are none).

        With ``compile`` on a GPU and a position-wise MLM head, encoder, gather, head and loss are one compiled
        graph (:func:`masked_mean_loss`) whose number of masked positions is symbolic, so every batch of the same
        shape runs it without recompiling. Otherwise the gather, head and loss run eagerly (around the encoder
        compiled alone, when ``compile`` is on).
        """
        if not self._compiles_whole_loss():
            return masked_mean_loss(self, batch)
        loss_fn = self.__dict__.get("_compiled_loss")
        if loss_fn is None:
            self._encoder()  # built before tracing (the trace inlines it), kept out of the module tree as it is
            loss_fn = self.__dict__["_compiled_loss"] = torch.compile(masked_mean_loss, dynamic=False)
        # The masked count changes from batch to batch: marked dynamic, it is the graph's one symbolic size
        # (rather than one graph, and a compilation, per count; padding the positions to a few fixed budgets
        # would still compile a graph per budget and run the head on the padding).
        torch._dynamo.maybe_mark_dynamic(batch["masked_positions"], 0)
        torch._dynamo.maybe_mark_dynamic(batch["masked_labels"], 0)
        return loss_fn(self, batch)

    def _compiles_whole_loss(self) -> bool:
        # On a CPU the encoder alone stays compiled: measured there (benchmarks/README.md), not retuned here.
        return self.compiles and self.device.type == "cuda" and self._mlm_head() is not None

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
        metrics = self._metrics(stage)
        if labels.numel():
            metrics.loss.update(losses)  # mean over all masked tokens of the split: token-weighted
            metrics.accuracy.update((logits.argmax(-1) == labels).float())
            metrics.nonfinite.update((~torch.isfinite(losses)).sum())  # on the device: no synchronisation per step
        if "masked_words" in batch:  # whole-word masking: every piece of a chosen word is a masked token
            metrics.words.update(float(batch["masked_words"]))
        return losses.sum()

    def training_step(self, batch: MLMBatch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: MLMBatch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._shared_step(batch, self._val_prefixes[dataloader_idx])

    def test_step(self, batch: MLMBatch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: MLMBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Top-1 predictions at the masked positions, with their labels and per-token losses."""
        labels = batch["masked_labels"]
        logits = self.masked_logits(self.compile_width(batch)).float()
        return {
            "positions": batch["masked_positions"],  # of the batch as given (compile_width may widen its rows)
            "labels": labels,
            "predictions": logits.argmax(-1),
            "losses": F.cross_entropy(logits, labels, reduction="none"),
        }

    @property
    def val_prefixes(self) -> list[str]:
        """The metric prefix of each validation set: ``val``, or ``val/<name>`` for each named set, in order."""
        return list(self._val_prefixes)

    def _metrics(self, stage: str) -> EvalMetrics:
        return self.eval_metrics[_metric_key(stage)]

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = self._metrics(stage)
        # Decided on the count of all devices: compute() below gathers from every device, so all must join it.
        updates = torch.tensor(metrics.loss.update_count, device=self.device)
        if self.trainer.strategy.reduce(updates, reduce_op="sum") == 0:
            return
        loss = metrics.loss.compute()
        # The counts summed over devices (every device is here: the update count above was reduced the same way).
        local = torch.stack([metrics.nonfinite.sum_value, metrics.loss.weight, metrics.words.sum_value]).double()
        bad, total, words = (int(x) for x in self.trainer.strategy.reduce(local, reduce_op="sum").tolist())
        if bad:
            split = "test" if stage == "test" else "validation" + (f" set {stage[4:]}" if "/" in stage else "")
            rank_zero_warn(
                f"{split}: {bad:,} of {total:,} masked tokens have a non-finite loss (NaN or "
                f"infinite), so {stage}/loss and {stage}/perplexity are {float(loss)}: the model has (partly) "
                f"diverged. Lower model.learning_rate or resume from an earlier checkpoint."
            )
        shown = stage == self._val_prefixes[0]  # the progress bar has room for one set
        self.log(f"{stage}/loss", loss, prog_bar=shown, add_dataloader_idx=False)
        self.log(f"{stage}/perplexity", torch.exp(loss), prog_bar=shown, add_dataloader_idx=False)
        self.log(f"{stage}/accuracy", metrics.accuracy.compute(), add_dataloader_idx=False)
        self.eval_counts[stage] = {"masked_tokens": total, "masked_words": words}
        if words:
            # Per word: each chosen word's pieces were all masked, so the summed token loss is the words' loss.
            word_loss = loss.double() * total / words
            self.log(f"{stage}/word_loss", word_loss.float(), add_dataloader_idx=False)
            self.log(f"{stage}/word_perplexity", torch.exp(word_loss).float(), add_dataloader_idx=False)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        for prefix in self._val_prefixes:
            self._log_epoch_metrics(prefix)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- throughput ---------------------------------------------------------------------------------------
    # Hand-written rather than Lightning's ThroughputMonitor, which (2.6) synchronises the GPU after every batch
    # (a host sync per step; here once per logging interval), reports tokens/s and MFU only once its window of
    # batches (`window_size`, default 100) is full, logs to the loggers directly under names that only overriding
    # its private `_compute` could change (`train/device/items_per_sec`, `train/device/mfu`), and gets no peak for
    # a CPU or for an "NVIDIA H200" from `get_available_flops` (see mlm_lightning/flops.py).
    def training_flops(self, batch: dict[str, Any]) -> int:
        """Model FLOPs of one training step (forward and backward) on ``batch``, at the rows' real lengths."""
        shape = self.__dict__.get("_encoder_shape")
        if shape is None:
            shape = self.__dict__["_encoder_shape"] = EncoderShape.from_config(self.model.config)
        tokens, pairs = batch_token_counts(batch)
        # The head runs on the masked positions only, unless full logits are computed (then at every token).
        head_positions = batch["masked_positions"].numel() if self._mlm_head() is not None else tokens
        return training_flops(shape, tokens, pairs, head_positions)

    def on_train_start(self) -> None:
        self.apply_optimizer_settings()  # after a resume: the configured settings, not the checkpoint's
        # Known once the device and precision are: the GPU table, or this CPU's measured (cached) matmul peak.
        if self.trainer.is_global_zero:
            self._peak_flops = peak_flops(self.device, compute_dtype(self.trainer.precision), self._cache_dir())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Real (non-pad) tokens per second over the logging interval; wall time, so it includes data loading.
        # MFU: model FLOPs per second of this device over the same interval, divided by its peak.
        if not self.trainer.is_global_zero and self.trainer.world_size > 1:
            return
        every = max(1, self.trainer.log_every_n_steps)
        if self._last_time is None:
            self._sync()
            self._last_time, self._tokens_seen, self._flops_seen = time.perf_counter(), 0, 0
            return
        self._tokens_seen += batch_token_counts(batch)[0]
        self._flops_seen += self.training_flops(batch)
        if (batch_idx + 1) % every == 0:
            self._sync()  # once per interval, so the clock sees the GPU's work and not just its queue
            now = time.perf_counter()
            elapsed = max(now - self._last_time, 1e-9)
            rate = self._tokens_seen * self.trainer.world_size / elapsed
            self.log("train/tokens_per_sec", rate, on_step=True, on_epoch=False, rank_zero_only=True)
            if self._peak_flops:
                mfu = self._flops_seen / elapsed / self._peak_flops
                self.log("train/mfu", mfu, on_step=True, on_epoch=False, rank_zero_only=True)
                if mfu > 1 and self.device.type == "cpu":
                    fix = (
                        f"${CPU_PEAK_ENV} is below it"
                        if given_cpu_peak() is not None
                        else f"the CPU's matmul peak was measured while it was busy; delete "
                        f"{peak_cache_path(self._cache_dir())} to measure it again"
                    )
                    rank_zero_warn(f"train/mfu is above 1: {fix}")
            self._last_time, self._tokens_seen, self._flops_seen = now, 0, 0

    def _cache_dir(self) -> Any:
        """The run's cache folder (``data.cache_dir``), where the CPU peak is cached too; ``None``: the default."""
        return getattr(getattr(self.trainer, "datamodule", None), "cache_dir", None)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_epoch_start(self) -> None:
        self._last_time = None

    def on_validation_start(self) -> None:
        self._last_time = None  # validation time is not training throughput

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Before clipping, and only on steps that are logged: the norm costs a pass over every gradient.
        if (self.trainer.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            norms = grad_norm(self.model, norm_type=2)
            if norms:
                self.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clips as Lightning does, and also a fused optimizer's gradients where no gradient scaler is in use.

        Lightning's mixed-precision plugin refuses to clip for any optimizer that unscales gradients itself (a fused
        one), but with ``bf16-mixed`` there is no scaler: the gradients are the true ones, as in fp32, and clipping
        them is the base plugin's plain clipping. So bf16 runs that clip keep fused AdamW
        (:func:`adamw_implementation`).
        """
        from lightning.pytorch.plugins.precision import MixedPrecision, Precision
        from lightning.pytorch.utilities import GradClipAlgorithmType

        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            algorithm = GradClipAlgorithmType((gradient_clip_algorithm or "norm").lower())
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
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
            checkpoint["mlm_lightning"]["schedule"] = self._schedule

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get("mlm_lightning", {}).get("schedule")
        self._resumed = (record, int(checkpoint.get("global_step", 0)))
        # FSDP and DeepSpeed restore after configure_optimizers: give their scheduler the resumed schedule now.
        if self._trainer is not None and self.trainer.lr_scheduler_configs:
            self._schedule = self._plan_schedule()
            for config in self.trainer.lr_scheduler_configs:
                config.scheduler.lr_lambdas = [self._lr_lambda(self._schedule)] * len(config.scheduler.lr_lambdas)

    # -- optimisation -----------------------------------------------------------------------------------
    def total_optimizer_steps(self) -> int:
        """Optimizer steps of the whole run, without building the training dataloader.

        ``trainer.estimated_stepping_batches`` would build it before a checkpoint is restored, which
        loses a stateful dataloader's position (Lightning issue 20550), so it is computed from the data.
        Lightning stops at ``max_steps`` or at the end of ``max_epochs``, whichever comes first: so does the
        schedule.
        """
        trainer = self.trainer
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "num_train_batches"):
            return max(1, int(trainer.estimated_stepping_batches))  # the same minimum, from the dataloader
        if trainer.max_epochs in (None, -1):
            return max_steps or max(1, int(trainer.estimated_stepping_batches))
        per_epoch = dm.num_train_batches()  # per device: each device steps once per batch of its own shard
        if isinstance(trainer.limit_train_batches, int):
            per_epoch = min(per_epoch, trainer.limit_train_batches)
        elif trainer.limit_train_batches is not None and trainer.limit_train_batches < 1.0:
            per_epoch = int(per_epoch * trainer.limit_train_batches)
        by_epochs = max(1, math.ceil(per_epoch / trainer.accumulate_grad_batches) * trainer.max_epochs)
        return min(max_steps, by_epochs) if max_steps else by_epochs

    @staticmethod
    def _lr_lambda(plan: dict[str, Any]) -> Callable[[int], float]:
        """The multiplier of the peak learning rate at each step, for a schedule plan."""
        from transformers import (
            get_constant_schedule_with_warmup,
            get_cosine_schedule_with_warmup,
            get_linear_schedule_with_warmup,
            get_wsd_schedule,
        )

        # transformers' warm-up-and-decay function, taken from a scheduler on a throwaway optimizer.
        probe = torch.optim.SGD([torch.zeros(1)], lr=1.0)
        warmup, total = plan["warmup_steps"], plan["base_total"]
        if plan["scheduler"] == "linear":
            base = get_linear_schedule_with_warmup(probe, warmup, total)
        elif plan["scheduler"] == "cosine":
            base = get_cosine_schedule_with_warmup(probe, warmup, total)
        elif plan["scheduler"] == "wsd":
            base = get_wsd_schedule(probe, warmup, plan["decay_steps"], num_training_steps=total, decay_type="1-sqrt")
        else:
            base = get_constant_schedule_with_warmup(probe, warmup)
        # A partial of a module-level function: LambdaLR's state dict then holds no code.
        stretches = tuple(tuple(s) for s in plan["stretches"])
        return functools.partial(_lr_multiplier, base=base.lr_lambdas[0], stretches=stretches, end=plan["total_steps"])

    def _plan_schedule(self) -> dict[str, Any]:
        """The schedule of this run: a new one, or a resumed checkpoint's, kept or stretched to this run's end."""
        hp = self.hparams
        total = self.total_optimizer_steps()
        record, step = self._resumed or (None, 0)
        if record is None or record["scheduler"] != hp.scheduler:  # a new run (or a checkpoint without a record)
            warmup = hp.warmup_steps or int(hp.warmup_ratio * total)
            if warmup >= total > 0:
                self._warn_long_warmup(warmup, total)
            plan = {"scheduler": hp.scheduler, "warmup_steps": warmup, "base_total": total, "stretches": [],
                    "total_steps": total}  # fmt: skip
            if hp.scheduler == "wsd":  # the decay fits in what the warm-up leaves (no negative stable phase)
                plan["decay_steps"] = min(round(hp.get("decay_ratio", 0.2) * total), max(0, total - warmup))
            return plan
        end = record["total_steps"]
        if total == end or hp.scheduler == "constant":
            return record
        lam = self._lr_lambda(record)
        if total > end and step >= end and hp.scheduler != "constant" and lam(step) == 0.0:
            rank_zero_warn(
                f"the checkpoint's learning-rate schedule already ended at step {end} with a learning rate of 0: "
                f"steps {step + 1} to {total} would not change the weights, whatever model.resume_schedule says. To "
                f"train on, start a new run from an export of this one (model.model_name_or_path), or resume with "
                f"another model.scheduler (a new schedule)."
            )
            return record
        anchor = max(step, record["warmup_steps"])  # the warm-up is never stretched
        if self.resume_schedule == "stretch" and total > anchor:
            rank_zero_info(
                f"model.resume_schedule=stretch: the learning-rate schedule of the checkpoint (step {step}) ended at "
                f"step {end}; its remaining decay now ends at step {total}, from the current rate without a jump"
            )
            return {**record, "stretches": [*record["stretches"], [anchor, end, total]], "total_steps": total}
        if total > end:
            rank_zero_warn(
                f"this run ends at step {total} but the checkpoint's learning-rate schedule ends at step {end} "
                f"(model.resume_schedule={self.resume_schedule}): steps {end + 1} to {total} run at its final learning "
                f"rate {hp.learning_rate * lam(end):.3g}. Set model.resume_schedule=stretch to stretch the "
                f"remaining decay to step {total}."
            )
        else:
            why = "" if self.resume_schedule == "keep" else f" (nothing to stretch: the run is at step {step})"
            rank_zero_warn(
                f"this run ends at step {total}, before the end of the checkpoint's learning-rate schedule at step "
                f"{end} (model.resume_schedule={self.resume_schedule}){why}: it stops at a learning rate of "
                f"{hp.learning_rate * lam(total):.3g}, not the schedule's final one."
                + (f" Set model.resume_schedule=stretch to end the decay at step {total}." if not why else "")
            )
        return record

    def _warn_long_warmup(self, warmup: int, total: int) -> None:
        """Says that a warm-up of ``warmup`` steps does not end within a run of ``total`` steps (nothing else does)."""
        hp = self.hparams
        setting = "model.warmup_steps" if hp.warmup_steps else "model.warmup_ratio"
        reached = hp.learning_rate * (total - 1) / warmup  # the rate of the run's last step
        decay = "" if hp.scheduler == "constant" else " and never decays"
        rank_zero_warn(
            f"the warm-up ({warmup} steps, {setting}) is not shorter than this run ({total} optimizer steps): the "
            f"learning rate stops at {reached:.3g} on its way to model.learning_rate {hp.learning_rate:g}{decay}. "
            f"Set a smaller model.warmup_steps, or model.warmup_steps 0 and a model.warmup_ratio (a share of the run)"
        )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            # Biases and normalisation weights are 1-D: decaying them only hurts.
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        impl = adamw_implementation(self.device.type, self.trainer)
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, betas=tuple(hp.betas), eps=hp.eps, **impl)
        # Its length is recorded in checkpoints: a resumed run continues the same schedule (see resume_schedule).
        self._schedule = self._plan_schedule()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda(self._schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}

    def apply_optimizer_settings(self) -> None:
        """Puts the configured optimisation settings into the optimizer and scheduler, also after a resume.

        A resumed run loads the optimizer's and the scheduler's state from the checkpoint, and with it the
        checkpoint's learning rate (the scheduler's ``base_lrs``), weight decay, betas and eps: a changed setting
        would be silently undone. The moments and the step count stay the checkpoint's; the learning rate continues
        from the schedule's current step. Without a change (and in a fresh run) this changes nothing.
        """
        hp = self.hparams
        optimizer = self.trainer.optimizers[0]
        for group, decay in zip(optimizer.param_groups, (hp.weight_decay, 0.0)):  # the groups of configure_optimizers
            group.update(weight_decay=decay, betas=tuple(hp.betas), eps=hp.eps, initial_lr=hp.learning_rate)
        for config in self.trainer.lr_scheduler_configs:
            schedule = config.scheduler
            if isinstance(schedule, torch.optim.lr_scheduler.LambdaLR) and schedule.optimizer is optimizer:
                schedule.base_lrs = [hp.learning_rate] * len(schedule.base_lrs)
                # What LambdaLR.step() would set at this step, from the configured peak.
                lrs = [base * fn(schedule.last_epoch) for base, fn in zip(schedule.base_lrs, schedule.lr_lambdas)]
                for group, lr in zip(optimizer.param_groups, lrs):
                    group["lr"] = lr
                schedule._last_lr = lrs

    def check_max_seq_length(self, length: int | None) -> None:
        """Raises :class:`MLMError` when rows of ``length`` tokens exceed the model's position embeddings."""
        limit = self.max_positions
        if length and limit and length > limit:
            config = self.model.config
            reserved = config.max_position_embeddings - limit
            why = (
                f" ({config.max_position_embeddings} position embeddings, of which {config.model_type} reserves "
                f"the first {reserved}: its position ids start after the padding index)"
                if reserved > 0
                else ""
            )
            raise MLMError(
                f"data.max_seq_length={length} but the model has position embeddings for only {limit} tokens"
                f"{why}: lower data.max_seq_length"
            )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.check_max_seq_length(getattr(dm, "max_seq_length", None))
        if self._trainer is not None:  # before the strategy wraps the model: FSDP units are its own layers
            fill_auto_wrap_policy(self.trainer.strategy, self.model)
            self.decide_compile(self.trainer.strategy.root_device.type, stage)
        # One metric set per validation set of the data (before Lightning moves the module to its device).
        self._val_prefixes = list(getattr(dm, "val_splits", None) or ["val"])
        for prefix in self._val_prefixes:
            if _metric_key(prefix) not in self.eval_metrics:
                self.eval_metrics[_metric_key(prefix)] = EvalMetrics()

    @classmethod
    def around(cls, model: nn.Module, name: str = "") -> MLMModule:
        """An ``MLMModule`` whose network is ``model``, already loaded (``evaluate``): the same steps and metrics.

        Built with a one-unit throwaway network (cheap) that ``model`` then replaces; ``name`` is recorded as
        ``model_name_or_path``. Not for training or checkpoints: its architecture settings are not ``model``'s.
        """
        module = cls(
            vocab_size=1, hidden_size=1, num_hidden_layers=1, num_attention_heads=1, intermediate_size=1,
            max_position_embeddings=1, dropout=0.0,
        )  # fmt: skip
        module.model = model
        module.hparams["model_name_or_path"] = name
        module.hparams["vocab_size"] = model.config.vocab_size
        return module


class EvalMetrics(nn.Module):
    """The token-weighted metrics of one evaluation set, which torchmetrics reduces across devices.

    ``loss`` is the mean cross-entropy over all masked tokens (perplexity is its ``exp``), ``accuracy`` the share
    of masked tokens predicted exactly; ``nonfinite`` counts masked tokens whose loss is NaN or infinite and
    ``words`` the masked words of a whole-word-masking batch (``masked_words``), for per-word figures.
    """

    def __init__(self) -> None:
        super().__init__()
        # nan_strategy="disable": a NaN loss must make the mean NaN, not be dropped from it (the default).
        self.loss = MeanMetric(nan_strategy="disable")
        self.accuracy = MeanMetric()
        self.nonfinite = SumMetric(nan_strategy="disable")
        self.words = SumMetric()

    def reset(self) -> None:
        """Starts the next evaluation from zero."""
        for metric in (self.loss, self.accuracy, self.nonfinite, self.words):
            metric.reset()


def _metric_key(prefix: str) -> str:
    """A metric prefix as a submodule name (``val/domain`` -> ``val:domain``: module names cannot hold dots)."""
    return prefix.replace("/", ":")


# On a CPU the MLM head runs on a multiple of this many rows (masked_logits).
HEAD_ROWS_MULTIPLE = 64


def masked_mean_loss(module: MLMModule, batch: dict[str, Any]) -> torch.Tensor:
    """Mean cross-entropy of ``module``'s logits at ``batch``'s masked positions; labels ``-100`` are ignored.

    A sum over the counted labels rather than ``reduction="mean"``, so a batch without masked tokens gives a loss
    of 0 (with gradients) instead of NaN, and padding slots labelled ``-100`` change neither loss nor gradients.
    """
    labels = batch["masked_labels"]
    logits = module.masked_logits(batch).float()
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


# line_by_line batches under `compile` are padded to one of this many widths (multiples of max_seq_length / this).
COMPILE_WIDTHS = 4


def pad_to_compile_width(batch: dict[str, Any], longest: int, pad_token_id: int) -> dict[str, Any]:
    """``batch`` padded to the next multiple of ``longest / COMPILE_WIDTHS`` (rounded up to 8), with a mask.

    Every batch narrower than ``longest`` gets an attention mask (all ones if its rows are equally long), so each
    width is one input signature; full-width batches without padding (packed rows) keep running without one.
    Masked positions (indices into the flattened batch) are moved to the new row width; labels and counts stay.
    """
    ids = batch["input_ids"]
    rows, width = ids.shape
    step = math.ceil(longest / COMPILE_WIDTHS)
    if step >= 8:
        step = math.ceil(step / 8) * 8  # multiples of 8 suit matrix units
    target = min(max(longest, width), math.ceil(width / step) * step)
    if target == width and (width >= longest or "attention_mask" in batch):
        return batch
    extra = target - width
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    out = dict(batch)
    out["input_ids"] = F.pad(ids, (0, extra), value=pad_token_id)
    out["attention_mask"] = F.pad(mask, (0, extra), value=0)
    if "labels" in batch:
        out["labels"] = F.pad(batch["labels"], (0, extra), value=IGNORE_INDEX)
    positions = batch["masked_positions"]
    out["masked_positions"] = positions // width * target + positions % width
    return out


def adamw_implementation(device_type: str, trainer: L.Trainer) -> dict[str, bool]:
    """AdamW's implementation for a run: ``{"fused": True}`` or ``{"foreach": True}``.

    Fused (one kernel per step, no temporaries) on a GPU and on a CPU: an isolated step over ``base.yaml``'s 22.7M
    parameters took 14-18 ms fused against 82-86 ms multi-tensor (foreach), whose parameter-sized temporaries are
    fresh mappings under :mod:`mlm_lightning.allocator`'s threshold (16,000-21,000 page faults a step, against
    none). Multi-tensor when a run with a gradient scaler (``16-mixed``) clips gradients: a fused optimizer unscales
    inside its step, after clipping would have seen the scaled gradients, so Lightning refuses to clip (bf16 has no
    scaler: :meth:`MLMModule.configure_gradient_clipping` clips its fused optimizer); and on other devices, which
    torch's fused AdamW may not support.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = trainer.precision_plugin
    scaled = isinstance(plugin, MixedPrecision) and plugin.scaler is not None
    clips = bool(trainer.gradient_clip_val) and scaled
    return {"fused": True} if device_type in ("cpu", "cuda") and not clips else {"foreach": True}


def skip_mask_of_unpadded_batches() -> None:
    """Lets a compiled encoder run SDPA without a mask on batches without padding, as it runs uncompiled.

    Uncompiled, ``transformers`` passes no mask to SDPA when no attention mask is given, so SDPA takes its fused
    (flash or cuDNN) kernels. While ``torch.compile`` traces, ``transformers`` before 5.2x cannot look at the mask
    and builds an all-true one for every batch instead, and with a mask the compiled attention falls back to
    unfused float32 matrix products, softmax and dropout (measured on an H200: a sixth of a BERT-base step at
    sequence length 128). This wraps the registered ``sdpa`` mask function to return no mask in exactly the
    case its uncompiled path does: no attention mask (no padding), a bidirectional mask, no sliding window.
    Idempotent; a no-op where ``transformers`` has no mask registry (4.x).
    """
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:
        return
    try:
        sdpa_mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    except KeyError:
        return
    if getattr(sdpa_mask, "skips_unpadded", False):
        return

    @functools.wraps(sdpa_mask)
    def mask(*args: Any, **kwargs: Any) -> Any:
        unpadded = not args and kwargs.get("attention_mask") is None and kwargs.get("local_size") is None
        if unpadded and kwargs.get("allow_is_bidirectional_skip"):
            return None
        return sdpa_mask(*args, **kwargs)

    mask.skips_unpadded = True  # type: ignore[attr-defined]
    AttentionMaskInterface.register("sdpa", mask)
