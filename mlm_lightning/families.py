"""What differs between masked-LM families: where the vocabulary head sits, and what the config calls things.

Three tables, one row per family ``transformers`` ships in ``MODEL_FOR_MASKED_LM_MAPPING_NAMES``:

- ``HEADS``: the modules that turn the encoder's last hidden state into vocabulary logits, applied in order. Each
  is position-wise, so running them on the masked rows only gives exactly the logits the model's own forward
  gives there (the tests check loss and gradients against the model's ``labels=`` loss, family by family).
  ``NO_MASKED_HEAD`` says why the rest cannot (they get full logits).
- ``CONFIG_NAMES``: our architecture settings under the family's own config names (BERT's by default).
- ``UNDECLARED_CONFIG_FIELDS``: config fields a family's model reads that its config class does not declare
  (DeBERTa-v3's relative-attention settings), so that ``config_overrides`` may set them.
- ``POSITIONS_AFTER_PADDING``: families whose position ids start after the padding index, so that fewer tokens
  than ``max_position_embeddings`` fit in a row (:func:`max_sequence_length`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from mlm_lightning.errors import MLMError

# -- the masked-only head ---------------------------------------------------------------------------------------
HEADS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("bert", "big_bird", "ernie", "fnet", "layoutlm", "megatron-bert", "mobilebert", "mra", "nomic_bert"),
        ("cls",),
    ),
    **dict.fromkeys(("nystromformer", "rembert", "roc_bert", "roformer", "squeezebert", "tapas", "yoso"), ("cls",)),
    **dict.fromkeys(
        ("camembert", "data2vec-text", "esm", "esmc", "eurobert", "funnel", "gte", "ibert", "jina_embeddings_v3"),
        ("lm_head",),
    ),
    **dict.fromkeys(
        ("longformer", "luke", "mpnet", "reformer", "roberta", "roberta-prelayernorm", "xlm-roberta"), ("lm_head",)
    ),
    **dict.fromkeys(("xlm-roberta-xl", "xmod"), ("lm_head",)),
    "albert": ("predictions",),
    "distilbert": ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
    "electra": ("generator_predictions", "generator_lm_head"),
    "convbert": ("generator_predictions", "generator_lm_head"),
    "modernbert": ("head", "decoder"),  # final norm is inside ModernBertModel; sparse_prediction is this very path
    "ultrabert": ("head", "decoder"),
    "xlm": ("pred_layer.proj",),  # unless config.asm (adaptive softmax: no per-token logits at all)
    "flaubert": ("pred_layer.proj",),
    "deberta": ("cls",),  # legacy=True; legacy=False: lm_predictions(hidden, word embeddings), see masked_head
    "deberta-v2": ("cls",),
}

NO_MASKED_HEAD: dict[str, str] = {
    **dict.fromkeys(
        ("bart", "mbart", "mvp"),
        "an encoder-decoder: its logits come from the decoder, run on the shifted input",
    ),
    "perceiver": "its logits come from a cross-attention decoder over a fixed set of max_position_embeddings queries",
    **dict.fromkeys(
        ("modernvbert", "ultravbert", "neomme"), "a vision-language model: its text-only MLM head is not tested here"
    ),
}

# Families whose encoder has no attention mask (FNet mixes tokens by Fourier transform, padding included).
NO_ATTENTION_MASK = frozenset({"fnet"})


def masked_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | str:
    """The function mapping hidden states (rows, hidden) to vocabulary logits, or why the family has none.

    Modules are looked up on every call, so a resized vocabulary (``resize_token_embeddings``) is picked up.
    """
    family = model.config.model_type
    if family in ("deberta", "deberta-v2") and not model.config.legacy:
        return lambda hidden: model.lm_predictions(hidden, model.deberta.embeddings.word_embeddings)
    if family in ("xlm", "flaubert") and model.config.asm:
        return "its adaptive softmax (asm=True) gives no per-token logits"
    if family in NO_MASKED_HEAD:
        return NO_MASKED_HEAD[family]
    if family not in HEADS:
        return "it is not a family this tool knows the MLM head of"
    names = HEADS[family]

    def head(hidden: torch.Tensor) -> torch.Tensor:
        for name in names:
            hidden = model.get_submodule(name)(hidden)
        return hidden

    return head


def encoder_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, Any]:
    """Keyword arguments for the model's (or its encoder's) forward."""
    if model.config.model_type in NO_ATTENTION_MASK:
        return {"input_ids": input_ids}
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# -- from-scratch configs ---------------------------------------------------------------------------------------
BERT_NAMES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size",),
    "num_hidden_layers": ("num_hidden_layers",),
    "num_attention_heads": ("num_attention_heads",),
    "intermediate_size": ("intermediate_size",),
    "max_position_embeddings": ("max_position_embeddings",),
    "dropout": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
}

# Only what differs from BERT_NAMES. A name the family's config does not declare is reported and not set.
CONFIG_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "distilbert": {
        "hidden_size": ("dim",),
        "num_hidden_layers": ("n_layers",),
        "num_attention_heads": ("n_heads",),
        "intermediate_size": ("hidden_dim",),
        "dropout": ("dropout", "attention_dropout"),
    },
    **dict.fromkeys(
        ("xlm", "flaubert"),
        {
            "hidden_size": ("emb_dim",),
            "num_hidden_layers": ("n_layers",),
            "num_attention_heads": ("n_heads",),
            "dropout": ("dropout", "attention_dropout"),
        },
    ),
    "modernbert": {"dropout": ("attention_dropout", "embedding_dropout", "mlp_dropout")},
    "rembert": {"embedding_size": ("input_embedding_size", "output_embedding_size")},
    **dict.fromkeys(("esmc", "eurobert", "ultrabert"), {"dropout": ("attention_dropout",)}),
    "fnet": {"dropout": ("hidden_dropout_prob",)},
    **dict.fromkeys(
        ("bart", "mbart", "mvp"),
        {
            "hidden_size": ("d_model",),
            "num_hidden_layers": ("encoder_layers", "decoder_layers"),
            "num_attention_heads": ("encoder_attention_heads", "decoder_attention_heads"),
            "intermediate_size": ("encoder_ffn_dim", "decoder_ffn_dim"),
            "dropout": ("dropout", "attention_dropout"),
        },
    ),
}

# Where a family's config keeps the dropout on attention probabilities (model.attention_dropout): BERT and its
# descendants (also DeBERTa, Longformer, ...) under the first name, DistilBERT, ModernBERT, BART and others under
# the second. A config that declares neither has no such dropout.
ATTENTION_DROPOUT_NAMES = ("attention_probs_dropout_prob", "attention_dropout")


def attention_dropout_kwargs(config: Mapping[str, Any], value: float) -> dict[str, float]:
    """Config keyword arguments that set a model's attention dropout to ``value`` (``model.attention_dropout``).

    Raises :class:`MLMError` if the family's config has no attention dropout.
    """
    names = [name for name in ATTENTION_DROPOUT_NAMES if name in config]
    if not names:
        raise MLMError(
            f"model.attention_dropout: a {config.get('model_type', 'model')} config has no attention dropout "
            f"({' or '.join(ATTENTION_DROPOUT_NAMES)}): leave model.attention_dropout unset"
        )
    return dict.fromkeys(names, value)


# What a new model of the family needs beyond our settings to run at all.
FROM_SCRATCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "xmod": {"default_language": "en_XX"},  # its one default language adapter (else every forward raises)
}

# Config fields the family's modeling code reads (``getattr(config, name, default)``) that its config class does not
# declare, with their JSON type: ``config_overrides`` may set them (DeBERTa-v3's relative attention needs them).
UNDECLARED_CONFIG_FIELDS: dict[str, dict[str, type]] = {
    "deberta": {"talking_head": bool},
    "deberta-v2": {
        "share_att_key": bool,
        "norm_rel_ebd": str,  # "layer_norm" in DeBERTa-v3
        "position_buckets": int,
        "attention_head_size": int,
        "conv_kernel_size": int,
        "conv_groups": int,
        "conv_act": str,
    },
}

# Families whose from-scratch shape needs settings this tool does not have: one line instead of a broken model.
NO_FROM_SCRATCH: dict[str, str] = {
    "funnel": "sets its depth by block_sizes (pooling blocks), not num_hidden_layers",
    "reformer": "needs axial_pos_shape and attn_layers that match the sequence length",
    "perceiver": "sizes itself by d_model, num_blocks and d_latents",
    **dict.fromkeys(("modernvbert", "ultravbert", "neomme"), "is a vision-language model with nested configs"),
}


def config_kwargs(
    model_type: str,
    settings: dict[str, Any],
    embedding_size: int | None,
    token_ids: Mapping[str, int] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Our architecture ``settings`` as keyword arguments of ``model_type``'s config.

    Every setting goes under the family's own name(s) (``CONFIG_NAMES``); one its config does not declare is
    left out with one warning. Factorised-embedding families (a config with ``embedding_size``, or RemBERT's
    input/output embedding sizes) get ``hidden_size`` there unless ``embedding_size`` is given. The config's
    special-token ids are the tokenizer's ``token_ids`` (:func:`config_token_ids`). ``overrides`` (the user's
    ``config_overrides``) come last, checked by :func:`check_config_overrides`.
    Raises :class:`MLMError` for families that cannot be built from these settings.
    """
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise MLMError(f"model.model_type={model_type!r} is not a transformers model type")
    if model_type in NO_FROM_SCRATCH:
        raise MLMError(
            f"model.model_type={model_type} {NO_FROM_SCRATCH[model_type]}: start from a pretrained {model_type} "
            f"(model.model_name_or_path) instead"
        )
    config_class = CONFIG_MAPPING[model_type]
    declared = {f.name for f in dataclasses.fields(config_class)} | set(getattr(config_class, "attribute_map", {}))
    names = {**BERT_NAMES, **CONFIG_NAMES.get(model_type, {})}
    kwargs: dict[str, Any] = dict(FROM_SCRATCH_DEFAULTS.get(model_type, {}))
    ignored = []
    for setting, value in settings.items():
        targets = names.get(setting, (setting,))
        if not all(t in declared for t in targets):
            ignored.append(setting)
            continue
        kwargs.update(dict.fromkeys(targets, value))
    embedding_names = names.get("embedding_size", ("embedding_size",))
    if all(t in declared for t in embedding_names):
        kwargs.update(dict.fromkeys(embedding_names, embedding_size or settings["hidden_size"]))
    elif embedding_size is not None:
        ignored.append("embedding_size")
    if ignored:
        rank_zero_warn(f"model_type={model_type} has no setting for {', '.join(ignored)}: ignored")
    if token_ids is not None:
        kwargs.update(config_token_ids(config_class, token_ids))
    # The family's default special-token ids (e.g. ModernBERT's bos 50281) mean nothing in a new, smaller
    # vocabulary: cleared where the config allows None.
    for field in dataclasses.fields(config_class):
        nullable = "None" in str(field.type)
        foreign = isinstance(field.default, int) and field.default >= settings["vocab_size"]
        if field.name.endswith("_token_id") and field.name not in kwargs and nullable and foreign:
            kwargs[field.name] = None
    kwargs.update(check_config_overrides(model_type, overrides or {}))
    return kwargs


def check_config_overrides(model_type: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` if each is a field of ``model_type``'s config that no setting of ours controls.

    A field is one the config class declares (or aliases), or one of :data:`UNDECLARED_CONFIG_FIELDS` (of the type
    given there; the config checks its declared fields' types itself). Raises :class:`MLMError` naming the key for
    an unknown field, and the setting to use for a field that a setting (or the tokenizer) already decides.
    """
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    aliases = getattr(config_class, "attribute_map", {})
    declared = {f.name for f in dataclasses.fields(config_class)} | set(aliases)
    undeclared = UNDECLARED_CONFIG_FIELDS.get(model_type, {})
    # Each field a setting decides, by the family's names and ours: a second way to set it would disagree.
    controlled = {"model_type": "model.model_type", "vocab_size": "data.tokenizer (its size)"}
    names = {**BERT_NAMES, "embedding_size": ("embedding_size",), **CONFIG_NAMES.get(model_type, {})}
    for setting, targets in names.items():
        controlled.update(dict.fromkeys((setting, *targets), f"model.{setting}"))
    controlled.update(
        dict.fromkeys((f"{role}_token_id" for role in TOKEN_ROLES), "data.tokenizer (its special tokens)")
    )
    for key, value in overrides.items():
        field = aliases.get(key, key)
        where = controlled.get(key) or controlled.get(field)
        if where:
            raise MLMError(f"model.config_overrides.{key}: set by {where}, not by config_overrides")
        if key not in declared and key not in undeclared:
            raise MLMError(
                f"model.config_overrides.{key}: model_type={model_type} has no config field {key!r} "
                f"({config_class.__name__})"
            )
        expected = undeclared.get(key)
        if expected is not None and type(value) is not expected:  # exact: True is no position_buckets
            raise MLMError(
                f"model.config_overrides.{key} is {value!r}: model_type={model_type} takes a value of type "
                f"{expected.__name__}"
            )
    return dict(overrides)


# -- special-token ids ------------------------------------------------------------------------------------------
# The roles a tokenizer has ids for, as config fields name them (``pad_token_id``, ...).
TOKEN_ROLES = ("pad", "mask", "cls", "sep", "bos", "eos")
# A tokenizer without begin/end-of-sequence tokens (BERT's WordPiece) starts and ends every row with [CLS] and
# [SEP]: for a family whose config uses bos/eos ids (RoBERTa's <s> and </s> are its cls and sep tokens, ModernBERT's
# bos and cls are both [CLS]), those are the tokens they mean.
SAME_TOKEN = {"bos_token_id": "cls_token_id", "eos_token_id": "sep_token_id"}


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """A tokenizer's special-token ids by config field name (``{"pad_token_id": 0, ...}``); missing roles left out."""
    ids = {}
    for role in TOKEN_ROLES:
        value = getattr(tokenizer, f"{role}_token_id", None)
        if isinstance(value, int):
            ids[f"{role}_token_id"] = value
    return ids


def token_id_for(field: str, token_ids: Mapping[str, int]) -> int | None:
    """The tokenizer's id for a config's ``field`` (bos/eos: the cls/sep token when it has no bos/eos token)."""
    value = token_ids.get(field)
    return token_ids.get(SAME_TOKEN.get(field, ""), None) if value is None else value


def config_token_ids(config_class: type, token_ids: Mapping[str, int]) -> dict[str, int | None]:
    """The special-token fields of a new ``config_class`` config, from the tokenizer's ``token_ids``.

    Every role field the config declares (:data:`TOKEN_ROLES`) gets the tokenizer's id; bos/eos fall back to
    cls/sep only where the family uses them (its default is not ``None``: BERT's config keeps no bos). A role the
    tokenizer has no token for is ``None`` where the config allows it, so that no default id of the family (an id
    of another vocabulary) stays behind.
    """
    kwargs: dict[str, int | None] = {}
    for field in dataclasses.fields(config_class):
        if field.name not in {f"{role}_token_id" for role in TOKEN_ROLES}:
            continue
        value = token_ids.get(field.name)
        if value is None and field.default is not None:
            value = token_id_for(field.name, token_ids)
        if value is not None or "None" in str(field.type):
            kwargs[field.name] = value
    return kwargs


# -- position limits -------------------------------------------------------------------------------------------
# Masked-LM types whose position ids start after the padding index (fairseq's ``make_positions``): a row of n
# tokens takes positions padding_idx+1 .. padding_idx+n, so the first padding_idx+1 position embeddings are never
# usable. The value is where the padding index comes from: a config key, or a fixed index (MPNet's is always 1).
# From transformers' sources: the masked-LM models whose embeddings call ``create_position_ids_from_input_ids``.
POSITIONS_AFTER_PADDING: dict[str, str | int] = {
    "camembert": "pad_token_id",
    "data2vec-text": "pad_token_id",
    "esm": "pad_token_id",  # with absolute position embeddings; rotary ones have no table to run past
    "ibert": "pad_token_id",
    "longformer": "pad_token_id",
    "luke": "pad_token_id",
    "mpnet": 1,
    "roberta": "pad_token_id",
    "roberta-prelayernorm": "pad_token_id",
    "xlm-roberta": "pad_token_id",
    "xlm-roberta-xl": "pad_token_id",
    "xmod": "pad_token_id",
}


def max_sequence_length(config: Mapping[str, Any]) -> int:
    """Longest row, in tokens, that a model's position embeddings take (0 when unknown).

    ``max_position_embeddings``, less the positions that :data:`POSITIONS_AFTER_PADDING` families reserve
    (RoBERTa, XLM-R: 514 - pad_token_id 1 - 1 = 512).

    Args:
        config: A model configuration as a mapping (``PretrainedConfig.to_dict()``, or the ``model`` section of
            the command line: ``model_type``, ``max_position_embeddings``, ``pad_token_id``).
    """
    positions = int(config.get("max_position_embeddings") or 0)
    padding = POSITIONS_AFTER_PADDING.get(str(config.get("model_type")))
    if not positions or padding is None or config.get("position_embedding_type", "absolute") != "absolute":
        return positions
    padding_idx = config.get(padding) if isinstance(padding, str) else padding
    return max(0, positions - int(padding_idx or 0) - 1)
