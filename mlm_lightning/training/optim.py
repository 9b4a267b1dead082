"""The optimizer: AdamW with decayed and undecayed parameter groups, fused where it can be.

Its settings (weight decay, betas, eps, and the implementation) have one writer, the run's configuration: a
restored checkpoint gives the optimizer its moments and step counts, never its settings
(:func:`keep_configured_settings`), so a resume with another ``model.weight_decay`` trains with it. The
learning rate is :class:`mlm_lightning.training.schedule.PlannedLR`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import lightning as L
import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two groups of ``model``'s trainable parameters: decayed, then undecayed (biases and norms)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Biases and normalisation weights are 1-D: decaying them only hurts.
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw_implementation(device_type: str, trainer: L.Trainer) -> dict[str, bool]:
    """AdamW's implementation for a run: ``{"fused": True}`` or ``{"foreach": True}``.

    Fused (one kernel per step, no parameter-sized temporaries) on a GPU and on a CPU (faster there too:
    benchmarks/README.md). Multi-tensor (foreach) when a run with a gradient scaler (``16-mixed``) clips gradients:
    a fused optimizer unscales inside its step, after clipping would have seen the scaled gradients, so Lightning
    refuses to clip (bf16 has no scaler: ``MLMModule.configure_gradient_clipping`` clips its fused optimizer); and
    on other devices, which torch's fused AdamW may not support.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = trainer.precision_plugin
    scaled = isinstance(plugin, MixedPrecision) and plugin.scaler is not None
    clips = bool(trainer.gradient_clip_val) and scaled
    return {"fused": True} if device_type in ("cpu", "cuda") and not clips else {"foreach": True}


def keep_configured_settings(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any] | None:
    """A load-state-dict pre-hook: the loaded groups keep ``optimizer``'s own settings, only their parameters' state.

    ``Optimizer.load_state_dict`` takes every group setting from the saved state (the checkpoint's weight decay,
    betas, eps, learning rate, even fused or not); here the saved groups give only which parameters they hold.
    """
    saved = state_dict["param_groups"]
    if len(saved) != len(optimizer.param_groups):
        return None  # torch's own check names the mismatch
    own = ("params", "param_names")  # what a saved group says about itself
    groups = [
        {**group, **{key: value for key, value in current.items() if key not in own}}
        for group, current in zip(saved, optimizer.param_groups)
    ]
    return {**state_dict, "param_groups": groups}


def build_adamw(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: Sequence[float],
    eps: float,
    implementation: dict[str, bool],
) -> torch.optim.AdamW:
    """AdamW over ``model``'s :func:`parameter_groups`, whose settings a restored checkpoint does not replace."""
    groups = parameter_groups(model, weight_decay)
    optimizer = torch.optim.AdamW(
        groups, lr=learning_rate, betas=cast(tuple[float, float], tuple(betas)), eps=eps, **implementation
    )
    optimizer.register_load_state_dict_pre_hook(keep_configured_settings)
    return optimizer
