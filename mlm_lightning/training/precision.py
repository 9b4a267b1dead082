"""The training precision when the configuration leaves it unset: bf16-mixed where the hardware computes bf16.

One rule for ``trainer.precision: null``: ``bf16-mixed`` on a GPU that supports bf16 and on a CPU with native bf16
instructions (x86 AVX-512 BF16 or AMX: ``grep -o 'avx512_bf16\\|amx_bf16' /proc/cpuinfo``), else ``32-true``.
Without those instructions bf16 is emulated and slower than fp32, so it is never a blind default; with them it gave
``configs/base.yaml`` fp32's validation perplexity in less time (benchmarks/README.md). A value set in a config file
or on the command line is always kept.
"""

from __future__ import annotations

from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 arithmetic (x86)


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """This CPU's native bf16 instruction sets (from ``/proc/cpuinfo``; none where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no way to tell, so fp32
            return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def default_precision(accelerator: object = "auto") -> tuple[str, str]:
    """The precision for a run that sets none on ``accelerator`` (Lightning's setting), and why, in words."""
    name = accelerator if isinstance(accelerator, str) else ""
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", "this GPU supports bf16"
        return "32-true", "this GPU has no bf16 support"
    if name in ("cpu", "auto"):
        flags = cpu_bf16_flags()
        if flags:
            return "bf16-mixed", f"this CPU computes bf16 natively ({', '.join(flags)})"
        return "32-true", "this CPU has no native bf16 instructions"
    return "32-true", f"accelerator {accelerator}"
