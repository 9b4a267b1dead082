"""The network: ``MLMModule`` (the LightningModule), loading and building a masked LM, its tokenizer check,
compilation and FSDP sharding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlm_lightning.model.module import MLMModule

__all__ = ["MLMModule"]


def __getattr__(name: str) -> Any:
    # Lazy: `import mlm_lightning.model.loading` (export, fill-mask) must not import Lightning.
    if name == "MLMModule":
        from mlm_lightning.model.module import MLMModule

        return MLMModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
