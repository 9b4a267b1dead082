"""Library messages a normal run would print and that the user cannot act on, filtered at their source.

Every filter here names one message and says why it is dropped. Everything else Lightning, ``datasets`` and
``transformers`` say still gets through. Our own warnings are printed as our other messages (``warning: ...``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Corpora at least this large show ``datasets``' tokenization progress bar in a terminal (smaller ones take
# seconds; their "tokenizing ..." log line is enough).
TOKENIZE_PROGRESS_MIN_BYTES = 50_000_000

# (message regex, module regex of the line the warning points at, why it is dropped)
_WARNINGS: list[tuple[str, str, str]] = [
    # torch >= 2.10 deprecates LeafSpec; Lightning's own _pytree copy still uses it (nothing a user can change).
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree", "torch/Lightning"),
    # We pass `args` on purpose (in-process `main([...])` calls, and `inspect`, which hands its own arguments on)
    # while sys.argv also holds words: the warning is about a mistake this project does not make.
    (r"LightningCLI's args parameter is intended", r"lightning\.pytorch\.cli", "in-process CLI"),
    # A non-empty checkpoint folder is already refused unless the run resumes from it (run_folder.run_dir_guard),
    # so when Lightning sees one, it is the documented `--ckpt_path last` resume.
    (r"Checkpoint directory .* exists and is not empty", r"lightning\.pytorch\.callbacks\.model_checkpoint", "resume"),
    # Every bf16-mixed run (base.yaml on a bf16 CPU): the summary's size at 32 bits is the right one, since mixed
    # precision keeps the weights in float32.
    (r"Precision .* is not supported by the model summary", r"lightning\.pytorch\.utilities\.model_summary", "bf16"),
    # Streamed training rows (data.streaming) have a length by construction and are read in the training process,
    # never by workers: the duplicate-data risk the warning is about does not arise.
    (r"Your `IterableDataset` has `__len__` defined", r"lightning\.pytorch\.utilities\.data", "streaming"),
]

# Lightning info lines (logger ``lightning.pytorch.utilities.rank_zero``) that say nothing on this machine.
_INFO_LINES: list[str] = [
    "💡 Tip:",  # advertisement for Lightning's cloud logger, printed on every run without it
    "GPU available: False, used: False",  # no accelerator at all: nothing to choose (a GPU machine still says so)
    "TPU available: False, using: 0 TPU cores",
    "Trainer already configured with model summary callbacks",  # ours (PlainModelSummary), on purpose
    # The precision is in config.yaml, and a chosen one is said with its reason (cli.py); `evaluate` built a
    # Trainer per model and printed this once for each.
    "Using bfloat16 Automatic Mixed Precision (AMP)",
    # The end every run was configured for (our own lines say the step); "No training batches" still shows.
    "`Trainer.fit` stopped: `max_steps=",
    "`Trainer.fit` stopped: `max_epochs=",
]


# Lightning's seed_everything (logger ``lightning.fabric.utilities.seed``) says "Seed set to 42" before the
# configuration is checked, so a one-line error came out as two lines. The seed is in the run's config.yaml
# (``seed_everything``, also when it was drawn at random).
_SEED_LINES: list[str] = ["Seed set to "]


class _DropInfoLines(logging.Filter):
    """Drops the log records that start with one of ``lines`` (:data:`_INFO_LINES` by default; after a
    ``[rank: N]`` prefix, if any)."""

    def __init__(self, lines: list[str] | None = None) -> None:
        super().__init__()
        self.lines = _INFO_LINES if lines is None else lines

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("[rank: "):
            message = message.partition("] ")[2]
        return not any(message.startswith(line) for line in self.lines)


_LOG_FILTER = _DropInfoLines(_INFO_LINES)
_SEED_FILTER = _DropInfoLines(_SEED_LINES)
_PACKAGE_DIR = Path(__file__).resolve().parent


def _is_ours(filename: str) -> bool:
    """Whether a warning was raised in this package's code (``rank_zero_warn`` points at its caller)."""
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def _warning_formatter(previous: Any) -> Any:
    """``warnings.formatwarning`` that prints our own warnings as our other messages, ``warning: ...`` on one line.

    Without it they read ``.../mlm_lightning/data/cache.py:257: the tokenization cache entry ... is damaged`` (the
    format Lightning gives every path with "lightning" in it). Everybody else's warnings keep ``previous``.
    """

    def format_warning(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
        if _is_ours(filename):
            return f"warning: {' '.join(str(message).split())}\n"
        return previous(message, category, filename, lineno, line)

    format_warning.previous = previous  # type: ignore[attr-defined]
    return format_warning


def _warning_shower(previous: Any) -> Any:
    """``warnings.showwarning`` that puts :func:`_warning_formatter` over whatever formatter is current, then shows
    the warning as ``previous`` does.

    Set at each warning, not once: Lightning installs its own formatter when it is first imported, which may be
    after the command started. Showing through ``previous`` keeps ``catch_warnings(record=True)`` (pytest) working.
    """

    def show_warning(
        message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if not hasattr(warnings.formatwarning, "previous"):
            warnings.formatwarning = _warning_formatter(warnings.formatwarning)
        previous(message, category, filename, lineno, file, line)

    return show_warning


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Filters the known, unactionable library messages for the length of a command, and restores them after.

    Imports nothing: the filters match by name, so a tool that never loads Lightning does not pay for it.
    ``datasets``' progress bars are handled where the data is read (:func:`no_datasets_progress`).
    """
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")
    with warnings.catch_warnings():
        for message, module, _why in _WARNINGS:
            warnings.filterwarnings("ignore", message=message, module=module)
        rank_zero_log.addFilter(_LOG_FILTER)
        seed_log.addFilter(_SEED_FILTER)
        warnings.showwarning = _warning_shower(warnings.showwarning)  # catch_warnings puts the previous one back
        try:
            yield
        finally:
            warnings.formatwarning = getattr(warnings.formatwarning, "previous", warnings.formatwarning)
            rank_zero_log.removeFilter(_LOG_FILTER)
            seed_log.removeFilter(_SEED_FILTER)


@contextlib.contextmanager
def no_datasets_progress() -> Iterator[None]:
    """Switches ``datasets``' progress bars off inside the block ("Downloading data: 42/42 files", "Generating
    train split", "drop blank documents": for files on this disk they say nothing); :func:`tokenization_progress`
    brings the one that is useful back.
    """
    import datasets

    # HF_DATASETS_DISABLE_PROGRESS_BARS, when set, has priority (and datasets warns if we try to override it).
    touch_bars = datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None
    were_disabled = datasets.utils.are_progress_bars_disabled()
    if touch_bars:
        datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if touch_bars and not were_disabled:
            datasets.utils.enable_progress_bars()


@contextlib.contextmanager
def tokenization_progress(total_bytes: int) -> Iterator[None]:
    """``datasets``' progress bars inside the block only for a large corpus when stderr is a terminal.

    Elsewhere (logs, CI, small corpora) the caller's one "tokenizing ..." line stands for the whole step. The
    previous state is restored afterwards; ``HF_DATASETS_DISABLE_PROGRESS_BARS``, when set, decides alone.
    """
    import datasets

    if datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is not None:
        yield
        return
    show = total_bytes >= TOKENIZE_PROGRESS_MIN_BYTES and sys.stderr.isatty()
    were_disabled = datasets.utils.are_progress_bars_disabled()
    (datasets.utils.enable_progress_bars if show else datasets.utils.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.utils.disable_progress_bars if were_disabled else datasets.utils.enable_progress_bars)()


@contextlib.contextmanager
def no_transformers_progress() -> Iterator[None]:
    """Switches ``transformers``' progress bars off inside the block: "Writing model shards 1/1" for a one-file
    model says nothing, and in a log it is a line of carriage returns.
    """
    from transformers.utils import logging as hf_logging

    were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_enabled:
            hf_logging.enable_progress_bar()
