"""Outputs that appear complete or not at all: files (checkpoints) and folders (exports, trained tokenizers).

A crash, ``SIGKILL`` or full disk mid-write leaves the previous good version in place and at most a hidden
``.<name>.tmp-*`` leftover beside it (:func:`remove_leftovers` clears those). The recipe (temporary name in the
same folder, ``fsync``, ``os.replace``, ``fsync`` of the folder) is the standard POSIX one; neither the standard
library nor our dependencies offer it as a function for local paths. :func:`check_can_write` finds an
unwritable output folder before any work is done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlm_lightning.errors import MLMError


def _sibling(target: Path, kind: str) -> Path:
    # Not tempfile.mkstemp/mkdtemp: they create mode 0600/0700, which the output would keep after the rename.
    return target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}"


# The OS error in the text of a library's own exception type: the Rust writers (safetensors, which writes an
# export's weights, and tokenizers) raise no OSError, only "Error while serializing: I/O error: No space left on
# device (os error 28)" (safetensors 0.8) or "IoError(Os { code: 28, kind: StorageFull, ... })" (older releases).
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")


def os_errno(err: BaseException) -> int | None:
    """The ``errno`` of an ``OSError``, or of the OS error a library's exception names in its message."""
    if isinstance(err, OSError):
        return err.errno
    found = _OS_ERROR_IN_TEXT.search(str(err))
    return int(found[1] or found[2]) if found else None


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` or an exception it was raised from is "no space left" (torch.save wraps the OSError)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if os_errno(current) in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(target: Path, existed: bool) -> MLMError:
    """The one-line message for an output that could not be written because the disk (or quota) is full."""
    kept = f"the previous {target.name} is intact" if existed else "nothing was written"
    return MLMError(f"disk full: could not write {target} ({kept}). Free some space, or write elsewhere")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Makes a rename inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it
    os.umask(mask)
    return mask


def _usual_modes(folder: Path) -> None:
    """Gives every file and folder under ``folder`` the mode of a new file (0644 / 0755 under umask 022).

    Some writers create their files 0600 (safetensors' ``save_file``: ``model.safetensors`` of an export), which
    stopped an export from being shared with a team while its other files were readable.
    """
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _fsync_tree(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_file():
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``target``; when the block ends without error, moves it over ``target``.

    Write the file at the yielded path (open it yourself, or hand the path to a library). On success it is
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
        _fsync_tree(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _disk_full(err):
            raise disk_full_error(target, target.exists()) from err
        raise
    fsync_dir(target.parent)


def check_writable(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Fails early, before any work, when ``output_dir`` exists and may not be replaced."""
    target = Path(output_dir).expanduser()
    if target.exists() and not overwrite:
        raise MLMError(f"{target} already exists: choose another output folder, or pass --overwrite true")
    if target.exists() and not target.is_dir():
        raise MLMError(f"{target} exists and is not a folder")
    return target


def check_can_write(folder: str | os.PathLike[str], setting: str) -> None:
    """Proves that ``folder`` can be created and written, without creating it; else one MLMError.

    Args:
        folder: The output folder (it may not exist yet: its closest existing parent is tried).
        setting: The setting or variable that moves it, named in the message.
    """
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise MLMError(
            f"cannot write to {folder} ({err.strerror or err}): choose a writable folder with {setting}"
        ) from None


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside ``output_dir``; renames it into place only if the block succeeds.

    A crash or an error leaves ``output_dir`` as it was (absent, or the previous complete version) and no
    temporary folder behind. With ``overwrite``, an existing folder is swapped out and removed afterwards.
    """
    target = check_writable(output_dir, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = _sibling(target, "tmp")
    work.mkdir()
    existed = target.exists()
    try:
        yield work
        _usual_modes(work)
        _fsync_tree(work)
        if target.exists():
            # Two renames rather than rmtree-then-rename: the old folder stays whole until the new one is ready.
            old = _sibling(target, "old")
            old.mkdir()
            os.replace(target, old / target.name)
            try:
                os.replace(work, target)
            except OSError:
                os.replace(old / target.name, target)  # put the previous version back
                old.rmdir()
                raise
            fsync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, target)
            fsync_dir(target.parent)
    except BaseException as err:
        if _disk_full(err):
            raise disk_full_error(target, existed) from err
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
