"""Keeps freed tensor memory from piling up in the C heap (glibc ``malloc``) of a training process.

PyTorch's CPU tensors come from ``malloc``. glibc serves a large request with its own ``mmap`` and gives it back on
``free``, but then raises its *dynamic* mmap threshold to that size, so from the second step on the step's buffers
come from the heap, and stay in the process once freed (a dataloader worker forked later even keeps private copies
of those pages). A fixed threshold sends every large buffer back to the system when it is freed.

The price is kernel time: every large buffer is a new mapping whose pages are faulted in and zeroed, so CPU steps
are markedly slower. Hence a setting, ``memory.limit_heap`` (:class:`HeapGrowthLimit`), off by default: for a
machine short of memory. What is given back for free instead: the heap is trimmed (``malloc_trim``) between
phases, after each validation and when training ends, where the next step pays at most one round of page faults.
With the limit on, small buffers still collect below the threshold; a trim every :data:`TRIM_EVERY` steps gives
them back. The measurements behind each choice (thresholds, huge pages, the cost per step): benchmarks/README.md,
"Memory of ``make train``".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import lightning as L

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 1 << 20  # allocations from 1 MiB up get their own mapping, returned to the system on free
TRIM_EVERY = 10  # optimizer steps between two malloc_trim calls


@functools.cache  # looked up once: a trim runs every few steps
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_heap_growth(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fixes glibc's mmap threshold at ``threshold`` bytes for this process; ``False`` where there is no glibc."""
    libc = _libc()
    try:
        return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except AttributeError:  # musl and other C libraries have no mallopt: leave them as they are
        return False


def release_free_heap() -> bool:
    """Gives the free pages of every ``malloc`` arena back to the system (``malloc_trim(0)``); ``False``: no glibc."""
    libc = _libc()
    try:
        return libc is not None and bool(libc.malloc_trim(0))
    except AttributeError:
        return False


class HeapGrowthLimit(L.Callback):
    """Returns freed tensor memory to the system: between phases always, every few steps on request.

    The threshold is set when the command line is parsed and again when a run is set up, so ``trainer.fit`` from
    Python gets it as the CLI does (else such a run would train under glibc's dynamic threshold).

    Args:
        limit_heap: Give every freed large buffer back to the system (glibc on Linux: the mmap threshold fixed at
            1 MiB, the heap trimmed every 10 steps): less peak memory, for slower CPU steps (every large buffer is
            faulted in afresh; benchmarks/README.md). Off: glibc's own behaviour, as in any PyTorch program.
        release_between_phases: Trim the heap (``malloc_trim``) after each validation and when training ends, so
            the evaluation batches' buffers and the training step's free pages do not stay in the process through
            the next phase, the checkpoint and the export; the next step faults in what it reuses once.
    """

    def __init__(self, limit_heap: bool = False, release_between_phases: bool = True) -> None:
        self.limit_heap = limit_heap
        self.release_between_phases = release_between_phases

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.limit_heap:
            limit_heap_growth()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if self.limit_heap and trainer.global_step % TRIM_EVERY == 0:
            release_free_heap()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.limit_heap or self.release_between_phases:
            release_free_heap()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.limit_heap or self.release_between_phases:
            release_free_heap()
