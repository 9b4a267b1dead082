"""Signals that stop a command: ``SIGTERM`` (pre-emption, ``kill``) and ``SIGINT`` (Ctrl-C), never losing work.

* While a corpus is tokenized, :func:`stop_on_signals` turns either signal into :class:`~mlm_lightning.errors.
  Terminated` (one line, exit 143 or 130), so the half-built cache entry is removed on the way out, and the worker
  processes forked meanwhile (``data.num_proc``) ignore Ctrl-C (the parent stops them) and die with the parent,
  also when it is killed with ``SIGKILL`` (Linux ``PR_SET_PDEATHSIG``).
* During ``fit``, ``validate`` and ``test``, :func:`stop_gracefully` makes the first Ctrl-C behave like
  ``SIGTERM``: Lightning stops after the current batch, ``last.ckpt`` is saved at that step and the resume command
  is printed (:class:`Terminated`, not Lightning's exit with status 0). A second Ctrl-C stops at once; the
  checkpoint being written then is abandoned and the previous ``last.ckpt`` stays whole (checkpoints are written
  under a temporary name and renamed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mlm_lightning.errors import Terminated

if TYPE_CHECKING:  # Lightning and torch load only where a run stops: tokenizing and the tools need neither
    from lightning.pytorch import Trainer

SIGNAL_NAMES: dict[int, str] = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
# 128 + the signal's number, as a shell reports it
EXIT_CODES: dict[int, int] = {signal.SIGTERM: 143, signal.SIGINT: 130}

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
def _ctrl_c_stops_gracefully(on_first: Callable[[], None]) -> Iterator[list[int]]:
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


@contextlib.contextmanager
def stop_gracefully(trainer: Trainer) -> Iterator[None]:
    """Turns Lightning's ``SIGTERMException`` (a ``SystemExit`` with status 0) into :class:`Terminated` (status 143).

    Lightning notes a ``SIGTERM`` and stops after the current training batch (MLMCheckpoint saves ``last.ckpt``
    there, on every rank together, or, in a validation, the state from before it); this says so, and where to
    continue from, instead of looking like a success. The first Ctrl-C (``SIGINT``) is treated the same way
    (status 130); a second one stops at once, keeping the previous ``last.ckpt`` whole.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    before = signal.getsignal(signal.SIGTERM)

    def stop_after_batch() -> None:
        if signal.getsignal(signal.SIGTERM) is before:  # Lightning's handlers are not up: no loop to stop runs
            raise _stopped(trainer, signal.SIGINT)
        trainer._signal_connector.received_sigterm = True  # what Lightning's loops check after each batch

    with _ctrl_c_stops_gracefully(stop_after_batch) as ctrl_c:
        try:
            yield
        except SIGTERMException as err:
            raise _stopped(trainer, signal.SIGINT if ctrl_c else signal.SIGTERM) from err
        except SystemExit as err:  # Lightning's exit after a KeyboardInterrupt: the second Ctrl-C
            if not ctrl_c:
                raise
            raise _stopped(trainer, signal.SIGINT, " (a second Ctrl-C, while stopping)") from err


def _stopped(trainer: Trainer, signum: int, how: str = "") -> Terminated:
    """The one-line message of a run stopped by ``signum``: where it was, and the checkpoint to continue from."""
    import torch

    name = SIGNAL_NAMES[signum] + how
    where = f"{trainer.state.fn.value if trainer.state.fn else 'the run'} at step {trainer.global_step}"
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") if callback is not None else ""
    if not last or not os.path.isfile(last):
        return terminated(signum, f"stopped by {name} ({where}); no checkpoint was saved")
    try:
        step = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except Exception:  # the message matters more than the step number in it
        step = "?"
    return terminated(
        signum,
        f"stopped by {name} ({where}); the last checkpoint is {last} (step {step}): continue with --ckpt_path last",
    )
