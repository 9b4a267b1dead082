"""Whether and what ``torch.compile`` runs: :class:`CompilePolicy`, one per module, holds every compile decision.

On a CPU, torch's compiler (inductor) writes C++ and builds it with a C++ compiler (``$CXX``, else ``g++``); without
one the first compiled step fails deep inside torch. So ``true`` on a CPU is checked before anything runs, and
``null`` compiles on a CPU exactly where a compiler is there: shorter training steps there (figures:
benchmarks/README.md), though ``base.yaml`` sets ``false`` because the compiler's child processes take memory over
its budget. On a GPU ``null`` stays off: a step there takes milliseconds, so the compilation is won back only by
long runs, which set ``true``.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from mlm_lightning.errors import MLMError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def cpu_compiler() -> str | None:
    """The C++ compiler torch's inductor would build CPU code with (``$CXX``, else ``g++``), if it is installed.

    Inductor's own search (``torch._inductor.cpp_builder.get_cpp_compiler``) is private and raises deep in a
    compilation, so its default rule is repeated here: the same two names, looked up on ``PATH``.
    """
    name = os.environ.get("CXX") or "g++"
    found = shutil.which(name)
    return name if found else None


def default_compile(device_type: str) -> tuple[bool, str]:
    """Whether a run on ``device_type`` that leaves ``model.compile`` unset compiles, and why, in words."""
    if device_type == "cpu":
        compiler = cpu_compiler()
        if compiler:
            return True, f"a CPU with a C++ compiler ({compiler}): faster steps after about 30 s of compilation"
        return False, "no C++ compiler ($CXX or g++) for torch.compile's CPU code"
    return False, f"on a {device_type} device the compilation pays only in long runs"


def check_can_compile(device_type: str) -> None:
    """Raises :class:`MLMError` where ``model.compile: true`` cannot work: a CPU without a C++ compiler."""
    if device_type == "cpu" and cpu_compiler() is None:
        wanted = os.environ.get("CXX") or "g++"
        raise MLMError(
            f"model.compile=true on a CPU needs a C++ compiler (torch.compile builds C++ code with $CXX, else g++), "
            f"and {wanted} was not found: install one (e.g. apt install g++) or set model.compile false"
        )


@dataclass
class CompilePolicy:
    """Whether ``torch.compile`` runs a module's network, what it compiles, and the compiled code (built once).

    ``setting`` is ``model.compile``; ``None`` is the rule of :func:`default_compile` for the run's device, settled
    by :meth:`decide` (off before). The compiled encoder, model and loss are kept here, out of the module tree, so
    the state dict has no second copy of the weights.
    """

    setting: bool | None = False
    decided: bool | None = None  # by decide(), once the run's device is known
    said: bool = False  # the line of decide() (once: validation before fit sets up too)
    compiled: dict[str, Callable[..., Any]] = field(default_factory=dict)  # "encoder", "model", "loss"

    @property
    def compiles(self) -> bool:
        """Whether ``torch.compile`` runs the model (``setting``, or where it is ``None``, :meth:`decide`'s answer)."""
        return bool(self.setting) if self.decided is None else self.decided

    def runs_compiled(self, training: bool, device_type: str) -> bool:
        """Whether the network runs compiled now: on a CPU evaluation runs eagerly (no faster compiled there, and
        each batch shape would compile)."""
        return self.compiles and (training or device_type != "cpu")

    def compiles_whole_loss(self, device_type: str, position_wise_head: bool) -> bool:
        """Whether encoder, head and loss are one compiled graph: on a GPU with a position-wise head. On a CPU the
        encoder alone stays compiled (measured there: benchmarks/README.md)."""
        return self.compiles and device_type == "cuda" and position_wise_head

    def decide(self, device_type: str, stage: str = "fit") -> None:
        """Settles :attr:`compiles` for a ``stage`` run on ``device_type``; :class:`MLMError` where it cannot compile.

        Said in one line when ``setting`` is ``None`` and the run trains (on a CPU only training compiles).
        """
        decided = self.setting
        if decided is None:
            decided, why = default_compile(device_type)
            if stage == "fit" and not self.said:
                rank_zero_info(f"model.compile: {str(decided).lower()} ({why}; set it to choose)")
                self.said = True
        if decided and (stage == "fit" or device_type != "cpu"):
            check_can_compile(device_type)
        self.decided = decided

    def network(self, model: PreTrainedModel, whole_model: bool) -> Callable[..., Any]:
        """``model``'s encoder, or with ``whole_model`` the model, compiled: built on the first call, then the same.

        The encoder is looked up only to compile it: a trace of the whole loss reaches it through the compiled one.
        """
        key = "model" if whole_model else "encoder"
        compiled = self.compiled.get(key)
        if compiled is None:
            skip_mask_of_unpadded_batches()
            compiled = torch.compile(model if whole_model else model.base_model, dynamic=False)
            self.compiled[key] = compiled
        return compiled

    def whole_loss(
        self, loss: Callable[..., torch.Tensor], build_encoder: Callable[[], Any], batch: Mapping[str, Any]
    ) -> Callable[..., torch.Tensor]:
        """``loss`` compiled (once; ``build_encoder`` first: the trace inlines the compiled encoder), for ``batch``.

        The masked count changes from batch to batch: marked dynamic, it is the graph's one symbolic size (rather
        than one graph, and a compilation, per count; padding the positions to a few fixed budgets would still
        compile a graph per budget and run the head on the padding).
        """
        compiled = self.compiled.get("loss")
        if compiled is None:
            build_encoder()
            compiled = self.compiled["loss"] = torch.compile(loss, dynamic=False)
        torch._dynamo.maybe_mark_dynamic(batch["masked_positions"], 0)
        torch._dynamo.maybe_mark_dynamic(batch["masked_labels"], 0)
        return compiled


def skip_mask_of_unpadded_batches() -> None:
    """Lets a compiled encoder run SDPA without a mask on batches without padding, as it runs uncompiled.

    Uncompiled, ``transformers`` passes no mask to SDPA when no attention mask is given, so SDPA takes its fused
    (flash or cuDNN) kernels. While ``torch.compile`` traces, ``transformers`` before 5.2x cannot look at the mask
    and builds an all-true one for every batch instead, and with a mask the compiled attention falls back to
    unfused float32 matrix products, softmax and dropout (a large share of a GPU step: benchmarks/README.md). This
    wraps the registered ``sdpa`` mask function to return no mask in exactly the case its uncompiled path does: no
    attention mask (no padding), a bidirectional mask, no sliding window. Idempotent; a no-op where
    ``transformers`` has no mask registry (4.x).
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
