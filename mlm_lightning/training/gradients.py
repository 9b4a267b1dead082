"""Gradients before an optimizer step: their norm logged, and clipping where Lightning would refuse fused AdamW."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm


def log_grad_norm(module: L.LightningModule, network: torch.nn.Module) -> None:
    """Logs ``train/grad_norm`` (the 2-norm of all of ``network``'s gradients) on ``module``'s logged steps.

    Before clipping, and only on logged steps: the norm costs a pass over every gradient.
    """
    if (module.trainer.global_step + 1) % max(1, module.trainer.log_every_n_steps) == 0:  # type: ignore[attr-defined]  # Lightning's connectors set it, undeclared
        norms = grad_norm(network, norm_type=2)
        if norms:
            module.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)


def clip_without_scaler(
    trainer: L.Trainer,
    optimizer: torch.optim.Optimizer,
    gradient_clip_val: float | None,
    gradient_clip_algorithm: str | None,
) -> bool:
    """Clips a mixed-precision run's gradients where it has no gradient scaler; ``False`` where it did not clip.

    Lightning's mixed-precision plugin refuses to clip for any optimizer that unscales gradients itself (a fused
    one), but with ``bf16-mixed`` there is no scaler: the gradients are the true ones, as in fp32, and clipping
    them is the base plugin's plain clipping. So bf16 runs that clip keep fused AdamW. Elsewhere Lightning's own
    clipping runs (``False``).
    """
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision
    from lightning.pytorch.utilities import GradClipAlgorithmType

    plugin = trainer.precision_plugin
    if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None:
        algorithm = GradClipAlgorithmType((gradient_clip_algorithm or "norm").lower())
        Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
        return True
    return False
