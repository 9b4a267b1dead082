"""Output folders that appear complete or not at all (exports, trained tokenizers)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlm_lightning.errors import MLMError


def check_writable(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Fails early, before any work, when ``output_dir`` exists and may not be replaced."""
    target = Path(output_dir).expanduser()
    if target.exists() and not overwrite:
        raise MLMError(f"{target} already exists: choose another output folder, or pass --overwrite true")
    if target.exists() and not target.is_dir():
        raise MLMError(f"{target} exists and is not a folder")
    return target


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside ``output_dir``; renames it into place only if the block succeeds.

    A crash or an error leaves ``output_dir`` as it was (absent, or the previous complete version) and no
    temporary folder behind. With ``overwrite``, an existing folder is swapped out and removed afterwards.
    """
    target = check_writable(output_dir, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield work
        if target.exists():
            # Two renames rather than rmtree-then-rename: the old folder stays whole until the new one is ready.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(work, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
