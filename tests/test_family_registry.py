"""The family registry: one complete record per masked-LM family, and every name in it resolves in transformers."""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing

import pytest
import torch
import transformers
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForMaskedLM
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from mlm_lightning import families, family_config
from mlm_lightning.families import BERT_NAMES, FAMILIES, WORD_MARKERS, Family, TokenizerRecipe

SETTINGS = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
    dropout=0.0,
)
BUILDABLE = [f.name for f in FAMILIES.values() if not f.no_from_scratch]


def declared_fields(model_type: str) -> set[str]:
    config_class = CONFIG_MAPPING[model_type]
    return {f.name for f in dataclasses.fields(config_class)} | set(getattr(config_class, "attribute_map", {}))


def _skip_if_not_installed(name: str) -> None:
    if name not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        pytest.skip(f"the installed transformers has no {name}")


def test_the_registry_is_every_masked_lm_family() -> None:
    # Every family of the installed transformers; the registry may hold newer ones (it is read at the newest
    # supported version, and CI also runs the lowest: scripts/lowest-versions.txt).
    assert set(MODEL_FOR_MASKED_LM_MAPPING_NAMES) <= set(FAMILIES)
    assert all(key == record.name for key, record in FAMILIES.items())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_record_has_every_field_of_its_type(name: str) -> None:
    record = FAMILIES[name]
    hints = typing.get_type_hints(Family, vars(families))
    for field in dataclasses.fields(Family):
        value = getattr(record, field.name)
        expected = typing.get_origin(hints[field.name]) or hints[field.name]
        if expected is typing.Literal:
            assert value in typing.get_args(hints[field.name]), field.name
        elif expected is not types.UnionType:  # optional fields: checked below where they matter
            assert isinstance(value, expected), field.name
    assert bool(record.head) != bool(record.no_head), "a masked-only head, or why not: exactly one"
    assert set(BERT_NAMES) <= set(record.config_names)
    assert all(isinstance(names, tuple) and names for names in record.config_names.values())
    assert record.tokenizer is None or isinstance(record.tokenizer, TokenizerRecipe)
    assert record.word_marker == (WORD_MARKERS[record.tokenizer.kind] if record.tokenizer else None)


def test_an_unknown_family_gets_the_defaults() -> None:
    record = families.family("not-a-family")
    assert record == Family("not-a-family")
    assert record.config_names == BERT_NAMES and record.attention_mask and not record.head
    assert families.family(None).name == "None"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_records_names_resolve_in_transformers(name: str) -> None:
    """The MaskedLM class, the family's own config names, its undeclared fields and its tokenizer classes."""
    _skip_if_not_installed(name)
    record = FAMILIES[name]
    masked_lm = getattr(transformers, MODEL_FOR_MASKED_LM_MAPPING_NAMES[name])
    declared = declared_fields(name)
    for setting, names in record.config_names.items():
        if names != BERT_NAMES.get(setting):  # a family's own names must exist (BERT's may be reported missing)
            assert set(names) <= declared, (setting, names)
    assert not set(record.undeclared_config_fields) & declared, "a declared field needs no entry"
    assert set(record.from_scratch_defaults) <= declared
    if isinstance(record.positions_after_padding, str):
        assert record.positions_after_padding in declared
    modeling = importlib.import_module(masked_lm.__module__)
    assert all(hasattr(modeling, layer) for layer in record.fsdp_layers)
    if record.tokenizer is not None:
        assert record.tokenizer.kind in WORD_MARKERS
        for class_name in (record.tokenizer.tokenizer_class, record.tokenizer.pipeline_class):
            assert class_name is None or hasattr(transformers, class_name)


@pytest.mark.parametrize("name", BUILDABLE)
@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_each_records_modules_exist_in_a_tiny_model(name: str) -> None:
    """Head paths and FSDP layer classes name modules of the family's model (built on the meta device: no memory)."""
    _skip_if_not_installed(name)
    record = FAMILIES[name]
    kwargs = family_config.config_kwargs(name, SETTINGS, None, {"pad_token_id": 0})
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(AutoConfig.for_model(name, **kwargs))
    for path in record.head:
        model.get_submodule(path)
    classes = {type(m).__name__ for m in model.modules()}
    assert set(record.fsdp_layers) <= classes
    if record.fsdp_layers:  # only where transformers names no unit itself
        assert not getattr(model, "_no_split_modules", None)
