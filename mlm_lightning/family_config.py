"""A new model's config from our settings, under its family's own names (:mod:`mlm_lightning.families`).

Also the tokenizer's special-token ids by config field name: what a new config records, and what a pretrained
model's config is checked against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from mlm_lightning.errors import MLMError
from mlm_lightning.families import family


def attention_dropout_kwargs(config: Mapping[str, Any], value: float) -> dict[str, float]:
    """Config keyword arguments that set a model's attention dropout to ``value`` (``model.attention_dropout``).

    Raises :class:`MLMError` if the family's config has no attention dropout.
    """
    candidates = family(config.get("model_type")).attention_dropout_names
    names = [name for name in candidates if name in config]
    if not names:
        raise MLMError(
            f"model.attention_dropout: a {config.get('model_type', 'model')} config has no attention dropout "
            f"({' or '.join(candidates)}): leave model.attention_dropout unset"
        )
    return dict.fromkeys(names, value)


def config_kwargs(
    model_type: str,
    settings: dict[str, Any],
    embedding_size: int | None,
    token_ids: Mapping[str, int] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Our architecture ``settings`` as keyword arguments of ``model_type``'s config.

    Every setting goes under the family's own name(s) (``Family.config_names``); one its config does not declare is
    left out with one warning. Factorised-embedding families (a config with ``embedding_size``, or RemBERT's
    input/output embedding sizes) get ``hidden_size`` there unless ``embedding_size`` is given. The config's
    special-token ids are the tokenizer's ``token_ids`` (:func:`config_token_ids`). ``overrides`` (the user's
    ``config_overrides``) come last, checked by :func:`check_config_overrides`.
    Raises :class:`MLMError` for families that cannot be built from these settings.
    """
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise MLMError(f"model.model_type={model_type!r} is not a transformers model type")
    record = family(model_type)
    if record.no_from_scratch:
        raise MLMError(
            f"model.model_type={model_type} {record.no_from_scratch}: start from a pretrained {model_type} "
            f"(model.model_name_or_path) instead"
        )
    config_class = CONFIG_MAPPING[model_type]
    declared = {f.name for f in dataclasses.fields(config_class)} | set(getattr(config_class, "attribute_map", {}))
    names = record.config_names
    kwargs: dict[str, Any] = dict(record.from_scratch_defaults)
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

    A field is one the config class declares (or aliases), or one of ``Family.undeclared_config_fields`` (of the type
    given there; the config checks its declared fields' types itself). Raises :class:`MLMError` naming the key for
    an unknown field, and the setting to use for a field that a setting (or the tokenizer) already decides.
    """
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    aliases = getattr(config_class, "attribute_map", {})
    declared = {f.name for f in dataclasses.fields(config_class)} | set(aliases)
    record = family(model_type)
    undeclared = record.undeclared_config_fields
    # Each field a setting decides, by the family's names and ours: a second way to set it would disagree.
    controlled = {"model_type": "model.model_type", "vocab_size": "data.tokenizer (its size)"}
    names = dict(record.config_names)
    names.setdefault("embedding_size", ("embedding_size",))
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
