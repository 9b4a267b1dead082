"""Keeps freed tensor memory from piling up in the C heap (glibc ``malloc``) of a training process.

PyTorch's CPU tensors come from ``malloc``. glibc serves a large request with its own ``mmap`` and gives it
back on ``free``, but after each such ``free`` it raises its *dynamic* mmap threshold to that size (up to
32 MB), so from the second training step on, activations, gradients and optimizer temporaries of a few MB come
from the heap instead. Freed there, they stay in the process: measured on ``configs/base.yaml``, the heap grew to
1.27 GB after five steps while only 390 MB of it was in use, and a dataloader worker forked later kept private
copies of those pages as the training process rewrote them. A fixed threshold (which also turns the dynamic one
off) sends every large buffer back to the system when it is freed.

The price is kernel time: every large buffer is a new mapping whose pages are faulted in and zeroed. On
``base.yaml`` (batch 16 x 128) that is about 480,000 page faults and 0.6-0.7 s of kernel CPU per step, against
26,000 and 0.06 s with glibc's dynamic threshold, which peaked 400 MB higher. Measured alternatives
(``benchmarks/README.md``): 2 MiB behaves as 1 MiB; from 4 MiB up (trim threshold raised or not) the 3 MiB
hidden-state buffers go back to the heap and the peak rises by 250-420 MB; transparent huge pages for torch's
buffers (``THP_MEM_ALLOC_ENABLE=1``) cut the faults but not the kernel time. The lever that pays is allocating
less: ``model.attention_dropout: 0`` (fused attention) removed a third of the faults and 210 MB of the peak.
Because of that price it is a setting, ``memory.limit_heap`` (:class:`HeapGrowthLimit`), off by default and in
``configs/base.yaml``: on ``base.yaml`` it cost a third of the training speed (2,089 against 3,098 tokens/s) to
save 356 MB of a 24 GB machine (issue 20), the wrong trade for a user. What is given back for free instead: the
heap is trimmed (``malloc_trim``) between phases, after each validation and when training ends (before the
export), where the next step pays at most one round of page faults (``memory.release_between_phases``).

With the limit on, what still collects below the threshold (small buffers and their gaps, in the main heap and in
the arenas of torch's threads) grew the trainer by about 0.8 MB a step on ``base.yaml``; ``malloc_trim`` every
:data:`TRIM_EVERY` steps gives those free pages back (measured: flat from step 10 to 60).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import lightning as L

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 1 << 20  # allocations from 1 MiB up get their own mapping, returned to the system on free
TRIM_EVERY = 10  # optimizer steps between two malloc_trim calls (a few ms each)


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
    Python gets it as the CLI does (without it such a run trained under glibc's dynamic threshold, with 400-600 MB
    more peak memory than the same run from the command line, and other step times).

    Args:
        limit_heap: Give every freed large buffer back to the system (glibc on Linux: the mmap threshold fixed at
            1 MiB, the heap trimmed every 10 steps). Measured on ``base.yaml``: 356 MB less peak memory, but a
            third slower CPU steps (every large buffer is faulted in afresh). Off: glibc's own behaviour, as in
            any PyTorch program; for a machine short of memory.
        release_between_phases: Trim the heap (``malloc_trim``) after each validation and when training ends, so
            the evaluation batches' buffers and the training step's free pages do not stay in the process through
            the next phase, the checkpoint and the export. A few milliseconds each, and the next step faults in
            what it reuses once.
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
