"""Signals that stop a command: ``SIGTERM`` (pre-emption, ``kill``) and ``SIGINT`` (Ctrl-C), never losing work.

* While a corpus is tokenized, :func:`stop_on_signals` turns either signal into :class:`~mlm_lightning.errors.
  Terminated` (one line, exit 143 or 130), so the half-built cache entry is removed on the way out, and the worker
  processes forked meanwhile (``data.num_proc``) ignore Ctrl-C (the parent stops them) and die with the parent,
  also when it is killed with ``SIGKILL`` (Linux ``PR_SET_PDEATHSIG``).
* During ``fit``, :func:`ctrl_c_stops_gracefully` makes the first Ctrl-C behave like ``SIGTERM``: Lightning stops
  after the current batch, ``last.ckpt`` is saved at that step and the resume command is printed. A second Ctrl-C
  stops at once; the checkpoint being written then is abandoned and the previous ``last.ckpt`` stays whole
  (checkpoints are written under a temporary name and renamed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from mlm_lightning.errors import Terminated

SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal's number, as a shell reports it

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_forking_parents: list[int] = []  # the pids of processes inside stop_on_signals (children forked there are guarded)


def terminated(signum: int, message: str) -> Terminated:
    """A :class:`Terminated` for ``signum`` with its exit status (143 for SIGTERM, 130 for SIGINT)."""
    error = Terminated(message)
    error.exit_code = EXIT_CODES.get(signum, 128 + int(signum))
    return error


def _guard_child() -> None:
    """In a child forked inside :func:`stop_on_signals`: leave Ctrl-C to the parent and die with it."""
    if not _forking_parents or _forking_parents[-1] != os.getppid():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool; no traceback from every worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler raises: not in a worker
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != _forking_parents[-1]:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_guard_child)


@contextlib.contextmanager
def stop_on_signals(what: str, after: str = "") -> Iterator[None]:
    """``SIGTERM`` and ``SIGINT`` raise :class:`Terminated` inside this block, so ``finally`` clauses clean up.

    Args:
        what: What is being done, for the message (``tokenizing ...``).
        after: What the message adds (what was kept, what the next run does).
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for sig in EXIT_CODES:  # a second signal while cleaning up must not interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        raise terminated(signum, f"stopped by {SIGNAL_NAMES.get(signum, signum)} while {what}{after}")

    previous = {sig: signal.signal(sig, handler) for sig in EXIT_CODES}
    _forking_parents.append(os.getpid())
    try:
        yield
    finally:
        _forking_parents.pop()
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def ctrl_c_stops_gracefully(on_first: Callable[[], None]) -> Iterator[list[int]]:
    """The first Ctrl-C calls ``on_first`` (which asks the run to stop after its batch); a second one interrupts.

    Yields a list that holds ``SIGINT`` once a Ctrl-C arrived, for the message at the end.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt  # the second: stop now (an interrupted checkpoint write leaves the old file)
        received.append(signum)
        on_first()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)
