"""Bit-exact resume of dropout: the global random states travel in the checkpoint.

:class:`RandomStates` saves the global random states (torch incl. dropout, CUDA, numpy, Python) in checkpoints
and restores them right before the first training step after a resume. Together with the data position
(``ResumableDataLoader``) and the per-example masks, the resumed run's losses equal an uninterrupted run's.
"""

from __future__ import annotations

import random
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


def collect_random_states() -> dict[str, Any]:
    """This process's global random states, in types that ``torch.load(weights_only=True)`` accepts."""
    # legacy=True (the default) gives the tuple, not the dict its annotation also allows.
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, gauss = legacy
    version, state, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(state), py_gauss],
    }
    # Only the current device: get_rng_state_all() would create a CUDA context on every visible GPU.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_random_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, py_gauss = states["python"]
    random.setstate((version, tuple(state), py_gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RandomStates(Callback):
    """Makes the global random states part of the checkpoint, for bit-exact resume.

    The states are captured at the end of every training batch and put back at the start of the next one, so
    whatever runs between two training steps (validation, checkpointing, a new epoch's dataloader iterator)
    never shifts the random numbers that dropout draws. A checkpoint holds the states captured after its last
    step; after a resume they are put back right before the first training step. Under DDP every rank's
    states are gathered into the checkpoint and each rank gets its own back (same world size only).
    """

    def __init__(self) -> None:
        self._states: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RandomStates"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self._states is not None:
            restore_random_states(self._states)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._states = collect_random_states()

    def state_dict(self) -> dict[str, Any]:
        states = self._states if self._states is not None else collect_random_states()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)  # every rank takes part in dump_checkpoint
            return {"ranks": gathered}
        return {"ranks": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        dist = torch.distributed
        rank, world = (
            (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        )
        if len(ranks) == world:
            self._states = ranks[rank]
        else:
            rank_zero_warn(
                f"the checkpoint holds random states for {len(ranks)} processes, this run has {world}: "
                f"dropout will not continue exactly as in the original run"
            )
