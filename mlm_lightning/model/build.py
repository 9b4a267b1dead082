"""The network of an ``MLMModule``: a pretrained masked LM loaded, or a new one built, its vocabulary padded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from mlm_lightning import family_config
from mlm_lightning.errors import MLMError
from mlm_lightning.families import max_sequence_length
from mlm_lightning.model.base_head import BaseHead
from mlm_lightning.model.loading import load_masked_lm, load_model_config
from mlm_lightning.model.tokenizer_match import check_tokenizer_matches

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Architecture:
    """The shape of a model built from scratch, in the family-neutral names of ``MLMModule``'s settings.

    ``family_config.config_kwargs`` puts each under the family's own config name. ``vocab_size`` is also the
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
    special_token_ids: dict[str, int] | None = None  # the tokenizer's, by config field name (family_config.TOKEN_ROLES)
    config_overrides: dict[str, Any] | None = None  # further fields of a new model's config, by their own names


def build_model(
    architecture: Architecture,
    model_name_or_path: str | None = None,
    tokenizer_name_or_path: str | None = None,
    attention_dropout: float | None = None,
    base_head: BaseHead = "auto",
) -> PreTrainedModel:
    """Loads the pretrained masked LM ``model_name_or_path``, or builds a new one of ``architecture``.

    A pretrained model keeps its own architecture; its embeddings are checked to cover ``vocab_size``, and the
    tokenizer (``tokenizer_name_or_path``, ``architecture.special_token_ids``) to be its own
    (:func:`mlm_lightning.model.tokenizer_match.check_tokenizer_matches`).
    A new one takes the tokenizer's special-token ids (``architecture.special_token_ids``) where its config has
    the field, and ``architecture.config_overrides`` (which a pretrained model does not take: an error).
    ``attention_dropout`` (``None``: the model's own, or ``architecture.dropout`` for a new one) replaces the
    attention dropout either way.
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
            overrides = family_config.attention_dropout_kwargs(load_model_config(model_name_or_path), attention_dropout)
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
    kwargs = family_config.config_kwargs(
        model_type, settings, architecture.embedding_size, architecture.special_token_ids, architecture.config_overrides
    )
    if attention_dropout is not None:
        declared = AutoConfig.for_model(model_type, **kwargs).to_dict()
        kwargs.update(family_config.attention_dropout_kwargs(declared, attention_dropout))
    try:
        return AutoModelForMaskedLM.from_config(AutoConfig.for_model(model_type, **kwargs))
    # The family's own validation, e.g. heads not dividing the width, or a config_overrides value of the wrong type.
    except (ValueError, TypeError, StrictDataclassError) as err:
        err_line = " ".join(str(err).split())
        raise MLMError(f"cannot build a new {model_type} model from these settings: {err_line}") from err


def build_network(settings: Mapping[str, Any]) -> PreTrainedModel:
    """The network of ``MLMModule``'s ``settings`` (its hyperparameters): checked, loaded or built, vocabulary padded.

    ``pad_vocab_multiple`` rounds the embedding and output vocabulary up (the extra rows are never a target).
    """
    pretrained = settings["model_name_or_path"]
    hidden, heads = settings["hidden_size"], settings["num_attention_heads"]
    if not pretrained and hidden % heads:
        raise MLMError(f"model.hidden_size={hidden} is not a multiple of model.num_attention_heads={heads}")
    vocab_size, pad_token_id = settings["vocab_size"], settings["pad_token_id"]
    if not pretrained and pad_token_id >= vocab_size:
        raise MLMError(f"model.pad_token_id={pad_token_id} is not below the vocabulary size {vocab_size}")
    architecture = Architecture(**{f.name: settings[f.name] for f in fields(Architecture)})
    tokenizer, dropout = settings["tokenizer_name_or_path"], settings["attention_dropout"]
    model = build_model(architecture, pretrained, tokenizer, dropout, settings.get("base_head", "auto"))
    multiple = settings["pad_vocab_multiple"]
    if multiple > 1 and model.config.vocab_size % multiple:
        model.resize_token_embeddings(model.config.vocab_size, pad_to_multiple_of=multiple, mean_resizing=False)
    return model


def check_max_seq_length(model: PreTrainedModel, length: int | None) -> None:
    """Raises :class:`MLMError` when rows of ``length`` tokens exceed ``model``'s position embeddings."""
    limit = max_sequence_length(model.config.to_dict())
    if length and limit and length > limit:
        config = model.config
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
