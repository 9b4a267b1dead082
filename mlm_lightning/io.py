"""Crash-safe writes: a file or folder appears under its name only once it is complete.

Everything that writes a user-facing artefact (checkpoints, exports, reports) goes through these helpers, so a
crash, ``SIGKILL`` or full disk mid-write leaves the previous good version in place and at most a hidden
``.<name>.tmp-*`` leftover beside it. The pattern (temporary name in the same folder, ``fsync``, ``os.replace``,
``fsync`` of the folder) is the standard POSIX recipe; neither the standard library nor our dependencies
offer it as a function for local paths.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def _sibling(target: Path, kind: str) -> Path:
    # Not tempfile.mkstemp/mkdtemp: they create mode 0600/0700, and the result would keep it after the rename.
    return target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}"


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Makes a rename inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``target``; when the block ends without error, moves it over ``target``.

    Write the file at the yielded path (open it yourself, or hand the path to a library). On success the file is
    ``fsync``-ed and renamed over ``target`` in one atomic step; on error it is deleted and ``target`` is left as
    it was. Parent folders are created.

    Example:
        >>> with atomic_file("out/report.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text(json.dumps(report))
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode as any new file (umask)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``target``; when the block ends without error, it becomes ``target``.

    For multi-file outputs (e.g. ``save_pretrained`` exports). On error the temporary folder is removed and
    ``target`` is untouched. An existing ``target`` is replaced: it is first renamed aside and deleted only
    after the new folder is in place, so at every moment one complete version exists on disk (under
    ``target`` or, for the instant between the two renames, under ``.<name>.old-*``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                with open(path, "rb+") as fh:
                    os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = _sibling(target, "old")
            old.mkdir()
            os.replace(target, old / target.name)
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old / target.name, target)
            raise
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(folder: str | os.PathLike[str]) -> list[Path]:
    """Deletes the temporaries that killed writers left in ``folder``; call it only while no writer is active."""
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
