"""FSDP for every family: one FSDP unit per transformer layer of the model actually trained, found from the model.

``configs/scale/fsdp.yaml`` used to name ``BertLayer``, which wraps nothing in a RoBERTa, ModernBERT or DeBERTa
(the whole model became one unit: no sharding benefit, full-size all-gathers). transformers lists, per model class,
the modules that must stay whole on one device (``_no_split_modules``: each family's layer class, for some its
embeddings too); those are the natural FSDP units. Where it lists none, the family's record names them
(``Family.fsdp_layers``), else the layer stack's class is.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from mlm_lightning.families import family


def layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes of ``model``'s modules that its ``_no_split_modules`` names (names resolved on the instance).

    Families whose model class lists none (DistilBERT, ELECTRA, ALBERT, DeBERTa-v2 in transformers 5.24): the
    classes their record names (``Family.fsdp_layers``), else the class of the layer stack, the longest
    ``ModuleList`` of modules of one class.
    """
    config = getattr(model, "config", None)
    names = set(getattr(model, "_no_split_modules", None) or family(getattr(config, "model_type", None)).fsdp_layers)
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if found:
        return found
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len({type(c) for c in m}) == 1]
    return {type(max(stacks, key=len)[0])} if stacks else set()


def auto_wrap_policy(model: nn.Module) -> Any | None:
    """A ``ModuleWrapPolicy`` with one unit per module of :func:`layer_classes`, or ``None`` if there are none."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    classes = layer_classes(model)
    return ModuleWrapPolicy(classes) if classes else None


def fill_auto_wrap_policy(strategy: Any, model: nn.Module) -> None:
    """Gives an FSDP strategy without an ``auto_wrap_policy`` the model's own layers (before it wraps the model).

    A policy set in the configuration is kept. Called from ``MLMModule.setup``, which Lightning runs before
    the strategy wraps the model.
    """
    if not isinstance(strategy, FSDPStrategy) or strategy.kwargs.get("auto_wrap_policy") is not None:
        return
    policy = auto_wrap_policy(model)
    if policy is None:
        rank_zero_warn(
            f"FSDP: {type(model).__name__} has no layer classes (_no_split_modules, a layer stack), so the whole "
            f"model is one FSDP unit; set trainer.strategy.init_args.auto_wrap_policy to shard it layer by layer"
        )
        return
    strategy.kwargs["auto_wrap_policy"] = policy
    names = ", ".join(sorted(c.__name__ for c in layer_classes(model)))
    rank_zero_info(f"FSDP: one unit per {names}")
