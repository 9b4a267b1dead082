"""Whether ``torch.compile`` runs the model: one rule for ``model.compile: null``, and the check of ``true``.

On a CPU, torch's compiler (inductor) writes C++ and builds it with a C++ compiler (``$CXX``, else ``g++``); without
one the first compiled step fails deep inside torch. So ``true`` on a CPU is checked before anything runs, and
``null`` compiles on a CPU exactly where a compiler is there: shorter training steps there (figures:
benchmarks/README.md), though ``base.yaml`` sets ``false`` because the compiler's child processes take memory over
its budget. On a GPU ``null`` stays off: a step there takes milliseconds, so the compilation is won back only by
long runs, which set ``true``.
"""

from __future__ import annotations

import os
import shutil

from mlm_lightning.errors import MLMError


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
