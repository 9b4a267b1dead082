"""A cache entry's safety: its integrity checks (sizes, digests, ``meta.json``'s own digest), its removal in one
step, and the locked work folders of tokenizations in progress (a dead one's is removed by the next run)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

try:  # POSIX only: elsewhere stale work folders are left alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_WORK_NAME = re.compile(r"^\.[0-9a-f]{24}-")  # ``.<key>-<random>``: an entry being built (key: 12-byte hex)
STREAM_FILES = ("tokens.npy", "doc_offsets.npy")  # what each split folder of a cache entry holds
VERIFIED: set[tuple[Any, ...]] = set()  # entries whose digests this process has checked (with their files' stats)


def hold_work_folder(folder: Path) -> int:
    """An open descriptor of ``folder`` with an exclusive ``flock`` on it: the OS drops it when this process ends."""
    fd = os.open(folder, os.O_RDONLY)
    if fcntl is not None:
        with contextlib.suppress(OSError):  # no lock support (some network file systems): not cleaned then
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def remove_stale_work(folder: Path) -> list[Path]:
    """Removes the work folders (``.<key>-*``) of tokenizations whose process died (``SIGKILL``, power loss).

    A live tokenization holds a lock on its work folder (:func:`hold_work_folder`); one that can be locked has no owner.
    """
    removed = []
    if fcntl is None:
        return removed
    for path in folder.glob(".*-*"):
        if not path.is_dir() or not _WORK_NAME.match(path.name):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its tokenization is still running
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _blake2b(path: Path) -> str:
    """Digest of a file, read in chunks (blake2b: fast in software, no need for a cryptographic margin)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def stream_checksums(folder: Path, splits: list[str]) -> dict[str, dict[str, Any]]:
    """``{"split/file": {"bytes", "blake2b"}}`` for every stream file of a cache entry, as written."""
    return {
        f"{s}/{n}": {"bytes": (folder / s / n).stat().st_size, "blake2b": _blake2b(folder / s / n)}
        for s in splits
        for n in STREAM_FILES
    }


def meta_digest(meta: dict[str, Any]) -> str:
    """Digest of ``meta.json``'s content without its own ``meta_blake2b`` field (canonical JSON: key order and
    indentation do not count, every value does)."""
    content = {k: v for k, v in meta.items() if k != "meta_blake2b"}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=16).hexdigest()


def files_stamp(folder: Path, names: list[str]) -> tuple[Any, ...]:
    """What identifies the verified state of an entry's files cheaply: path, and each file's size, mtime, inode."""
    stats = [(folder / n).stat() for n in names]
    return (str(folder.resolve()), *((n, st.st_size, st.st_mtime_ns, st.st_ino) for n, st in zip(names, stats)))


def entry_problem(folder: Path, splits: list[str], version: int) -> tuple[str | None, dict[str, Any] | None]:
    """Checks a cache entry: ``(None, meta)`` when sound, else ``(what is wrong, None)``.

    Always (cheap): ``meta.json`` parses, matches its own digest, has the expected fields, and every file has its
    recorded size. The
    digests are compared once per process for each state of the files (memoized by size, mtime and inode), so
    creating dataloaders again does not re-read a large corpus.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("meta_blake2b") != meta_digest(meta):
            return "meta.json does not match its recorded digest (edited?)", None
        sums = meta["checksums"]
        expected = {
            f"{s}/{n}": (int(sums[f"{s}/{n}"]["bytes"]), str(sums[f"{s}/{n}"]["blake2b"]))
            for s in splits
            for n in STREAM_FILES
        }
        if meta["version"] != version or not all(isinstance(meta["splits"][s], dict) for s in splits):
            raise ValueError("another format")
    except FileNotFoundError:
        return "meta.json is missing", None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"meta.json is unreadable or incomplete ({type(err).__name__})", None
    for rel, (size, _) in expected.items():
        try:
            actual = (folder / rel).stat().st_size
        except OSError:
            return f"{rel} is missing", None
        if actual != size:
            return f"{rel} has {actual:,} bytes instead of {size:,}", None
    stamp = files_stamp(folder, sorted(expected))
    if stamp not in VERIFIED:
        for rel, (_, digest) in expected.items():
            if _blake2b(folder / rel) != digest:
                return f"{rel} does not match its recorded digest", None
        VERIFIED.add(stamp)
    return None, meta


def discard_entry(folder: Path) -> None:
    """Removes a cache entry: first renamed out of its key in one step, so no half-deleted entry is ever seen."""
    aside = folder.with_name(f".{folder.name}.damaged-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return  # another process removed (and maybe rebuilt) it already
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
