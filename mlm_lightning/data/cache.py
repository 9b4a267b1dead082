"""The tokenization cache: one folder per corpus, named by a hash of everything that changes its tokens.

An entry ``<cache_dir>/corpora/<key>`` holds one flat token stream per split (``tokens.npy``, ``doc_offsets.npy``)
and ``meta.json`` (statistics, sizes and digests of the stream files, and a digest of its own content). The key
(:meth:`CorpusCache.key`) covers the files' contents, the tokenizer (:func:`tokenizer_fingerprint`), the text
settings and :data:`CACHE_VERSION`; change what goes into it there. An entry is written into a temporary folder and
renamed into place (a crash never leaves half an entry), and checked before use (``meta.json`` and sizes always,
the stream files' digests once per process), so a damaged entry is rebuilt or named, never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from mlm_lightning.data.reading import file_digest, load_documents
from mlm_lightning.data.token_stream import document_lengths, tokenize_documents, write_token_stream
from mlm_lightning.errors import MLMError
from mlm_lightning.interrupts import stop_on_signals
from mlm_lightning.io.atomic import check_can_write
from mlm_lightning.io.sources import CACHE_SETTING, cache_write_error, resolve_files
from mlm_lightning.quiet import tokenization_progress

# 2: sizes and digests in meta.json; 3: special-token strings are text, long documents in pieces; 4: meta.json's own
# digest (an edit that leaves valid JSON, a document count changed, was read as true).
CACHE_VERSION = 4
log = logging.getLogger(__name__)


try:  # POSIX only: elsewhere stale work folders are left alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

_WORK_NAME = re.compile(r"^\.[0-9a-f]{24}-")  # ``.<key>-<random>``: an entry being built (key: 12-byte hex)
_STREAM_FILES = ("tokens.npy", "doc_offsets.npy")  # what each split folder of a cache entry holds
_VERIFIED: set[tuple[Any, ...]] = set()  # entries whose digests this process has checked (with their files' stats)


def _hold(folder: Path) -> int:
    """An open descriptor of ``folder`` with an exclusive ``flock`` on it: the OS drops it when this process ends."""
    fd = os.open(folder, os.O_RDONLY)
    if fcntl is not None:
        with contextlib.suppress(OSError):  # no lock support (some network file systems): not cleaned then
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def remove_stale_work(folder: Path) -> list[Path]:
    """Removes the work folders (``.<key>-*``) of tokenizations whose process died (``SIGKILL``, power loss).

    A live tokenization holds a lock on its work folder (:func:`_hold`); one that can be locked has no owner.
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


def _checksums(folder: Path, splits: list[str]) -> dict[str, dict[str, Any]]:
    """``{"split/file": {"bytes", "blake2b"}}`` for every stream file of a cache entry, as written."""
    return {
        f"{s}/{n}": {"bytes": (folder / s / n).stat().st_size, "blake2b": _blake2b(folder / s / n)}
        for s in splits
        for n in _STREAM_FILES
    }


def _meta_digest(meta: dict[str, Any]) -> str:
    """Digest of ``meta.json``'s content without its own ``meta_blake2b`` field (canonical JSON: key order and
    indentation do not count, every value does)."""
    content = {k: v for k, v in meta.items() if k != "meta_blake2b"}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=16).hexdigest()


def _stamp(folder: Path, names: list[str]) -> tuple[Any, ...]:
    """What identifies the verified state of an entry's files cheaply: path, and each file's size, mtime, inode."""
    stats = [(folder / n).stat() for n in names]
    return (str(folder.resolve()), *((n, st.st_size, st.st_mtime_ns, st.st_ino) for n, st in zip(names, stats)))


def _entry_problem(folder: Path, splits: list[str]) -> tuple[str | None, dict[str, Any] | None]:
    """Checks a cache entry: ``(None, meta)`` when sound, else ``(what is wrong, None)``.

    Always (cheap): ``meta.json`` parses, matches its own digest, has the expected fields, and every file has its
    recorded size. The
    digests are compared once per process for each state of the files (memoized by size, mtime and inode), so
    creating dataloaders again does not re-read a large corpus.
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("meta_blake2b") != _meta_digest(meta):
            return "meta.json does not match its recorded digest (edited?)", None
        sums = meta["checksums"]
        expected = {
            f"{s}/{n}": (int(sums[f"{s}/{n}"]["bytes"]), str(sums[f"{s}/{n}"]["blake2b"]))
            for s in splits
            for n in _STREAM_FILES
        }
        if meta["version"] != CACHE_VERSION or not all(isinstance(meta["splits"][s], dict) for s in splits):
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
    stamp = _stamp(folder, sorted(expected))
    if stamp not in _VERIFIED:
        for rel, (_, digest) in expected.items():
            if _blake2b(folder / rel) != digest:
                return f"{rel} does not match its recorded digest", None
        _VERIFIED.add(stamp)
    return None, meta


def _discard(folder: Path) -> None:
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


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes its output."""
    digest = hashlib.blake2b(digest_size=16)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(
        backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode()
    )
    digest.update(type(tokenizer).__name__.encode())
    return digest.hexdigest()


class Corpus(NamedTuple):
    """One cache entry a data module needs: its key, its files and how it is split."""

    key: str
    files: list[Path]
    split: dict[str, Any]  # the validation split's settings; empty: the files are one split, ``all``

    @property
    def split_names(self) -> list[str]:
        """The split folders the entry holds."""
        return ["train", "val"] if self.split else ["all"]


class CorpusCache:
    """Builds, checks and finds tokenized corpora in ``folder/corpora``.

    Args:
        folder: The cache folder (``data.cache_dir``); downloads of ``http(s)://`` files go there too.
        tokenizer: The fast tokenizer the corpora are tokenized with.
        text_layout: How ``.txt`` files split into documents (see ``MLMDataModule``).
        text_column: The text column of ``.jsonl``/``.csv``/``.parquet`` files.
        non_text_rows: ``warn`` or ``error`` for rows whose text is null or not a string.
        encoding_errors: ``strict`` or ``replace`` for bytes of ``.txt`` files that are not UTF-8.
        num_proc: Processes for reading and tokenization (``None``: this process).
    """

    def __init__(
        self,
        folder: Path,
        tokenizer: Any,
        text_layout: str,
        text_column: str,
        non_text_rows: Literal["warn", "error"],
        encoding_errors: Literal["strict", "replace"],
        num_proc: int | None = None,
    ) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.text_layout = text_layout
        self.text_column = text_column
        self.non_text_rows = non_text_rows
        self.encoding_errors = encoding_errors
        self.num_proc = num_proc
        self.replaced_bytes: dict[str, int] = {}  # file -> bytes read as U+FFFD (encoding_errors=replace)
        self._metas: dict[str, dict[str, Any]] = {}  # key -> its checked meta.json
        self.digests: dict[str, str] = {}  # file -> content digest, as hashed for the keys

    def key(self, name: str, files: list[Path], extra: dict[str, Any]) -> str:
        """The entry's name: a hash of the files' contents, the tokenizer, the text settings and ``extra``."""
        digests = []
        for f in files:
            digest, invalid = file_digest(f, self.encoding_errors)
            digests.append([str(f), digest])
            self.digests[str(f)] = digest
            if invalid:
                self.replaced_bytes[str(f)] = invalid
                rank_zero_warn(f"{f}: {invalid} bytes are not valid UTF-8 and are read as U+FFFD")
        payload = {
            "version": CACHE_VERSION,
            "name": name,
            "files": digests,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "text_layout": self.text_layout,
            "text_column": self.text_column,
            "non_text_rows": self.non_text_rows,
            "encoding_errors": self.encoding_errors,
            **extra,
        }
        return hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=12).hexdigest()

    def corpora(
        self,
        train_files: list[str] | None,
        val_files: list[str] | dict[str, list[str] | None] | None,
        test_files: list[str] | None,
        val_fraction: float,
        seed: int,
    ) -> dict[str, Corpus]:
        """The entries a data module needs: split name (``train``, ``val``, ``test``) -> :class:`Corpus`.

        Without ``val_files``, ``train`` and ``val`` are one entry: ``val_fraction`` of the documents held out
        (seeded by ``seed``). Named validation sets (a mapping) are ``val/<name>``; a name mapped to ``None`` is
        that held-out share. Hashes every file (and checks it is readable text). ``train`` is left out when no
        validation set needs the training files and there are none (``evaluate`` on given files).
        """
        named = val_files if isinstance(val_files, dict) else {"": val_files}
        held_out = [name for name, files in named.items() if not files]
        if not train_files and (held_out or not val_files):
            raise MLMError("no training data: set data.train_files")
        entries: dict[str, Corpus] = {}
        train = resolve_files(train_files, self.folder) if train_files else []
        if held_out:
            split = {"val_fraction": val_fraction, "split_seed": seed}
            entries["train"] = Corpus(self.key("train+val", train, split), train, split)
        elif train:
            entries["train"] = Corpus(self.key("train", train, {}), train, {})
        for name, files in named.items():
            split_name = f"val/{name}" if name else "val"
            if files:
                val = resolve_files(files, self.folder)
                entries[split_name] = Corpus(self.key("val", val, {}), val, {})
            else:
                entries[split_name] = entries["train"]
        if test_files:
            test = resolve_files(test_files, self.folder)
            entries["test"] = Corpus(self.key("test", test, {}), test, {})
        return entries

    def meta(self, corpus: Corpus) -> dict[str, Any]:
        """The entry's checked ``meta.json`` (statistics per split, dropped rows); the entry must exist."""
        if corpus.key not in self._metas:
            self.entry(corpus, repair=False)
        return self._metas[corpus.key]

    def entry(self, corpus: Corpus, repair: bool = True) -> Path:
        """The folder of ``corpus``'s entry: tokenized into ``folder/corpora/key`` unless a sound one is there.

        Args:
            corpus: The entry to find or build.
            repair: A damaged entry is rebuilt, with a warning (the process that prepares data); otherwise it
                is an error naming the folder (other processes must not rebuild what they are all reading).
        """
        key, files, split = corpus
        final = self.folder / "corpora" / key
        names = corpus.split_names
        if final.exists():
            problem, meta = _entry_problem(final, names)
            if meta is not None:
                self._metas[key] = meta
                return final
            if not repair:
                raise MLMError(
                    f"the tokenization cache entry {final} is damaged ({problem}): delete that folder and run again "
                    f"(it is rebuilt from the text)"
                )
            rank_zero_warn(f"the tokenization cache entry {final} is damaged ({problem}): rebuilding it")
            try:
                _discard(final)
            except OSError as err:
                raise MLMError(f"cannot remove the damaged cache entry {final} ({err}): delete it yourself") from err
        check_can_write(final.parent, CACHE_SETTING)
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        log.info("tokenizing %d file(s), %.1f MB, into %s (once: later runs reuse it)", len(files), size_mb, final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_work(final.parent)
            work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        except OSError as err:  # no room even for a folder (inodes), or lost write access since the check
            raise (cache_write_error(err, final.parent, "the tokenized corpus") or err) from None
        built = False
        lock = _hold(work)  # while this process lives: a later run removes the folder only once it is dead
        # SIGTERM / Ctrl-C: one line, the work folder removed (finally, below), the tokenizing workers stopped.
        with stop_on_signals("tokenizing the corpus", ": nothing was cached (the next run tokenizes again)"):
            try:
                dropped: dict[str, int] = {}  # rows that are null or not text (non_text_rows)
                docs = load_documents(
                    files,
                    self.text_layout,
                    self.text_column,
                    self.encoding_errors,
                    work / "hf",
                    self.num_proc,
                    self.non_text_rows,
                    dropped,
                )
                if len(docs) == 0:
                    raise MLMError(f"no text in {', '.join(map(str, files))} (empty or whitespace only)")
                if split and len(docs) < 2:
                    raise MLMError(
                        f"only {len(docs)} document in the training files: cannot hold out data.val_fraction for "
                        f"validation. Set data.val_files, or data.text_layout to split the text into more documents."
                    )
                tok = self.tokenizer
                # Tokenize the whole corpus once (contiguous shards per worker), then split by document order.
                with tokenization_progress(int(size_mb * 1e6)):  # a bar in a terminal, for a large corpus only
                    ids = tokenize_documents(docs, tok, self.num_proc)
                lengths = document_lengths(ids)
                if split:
                    # The same split as ``datasets``' train_test_split(test_size=n_val, seed=split_seed).
                    n_val = max(1, round(len(docs) * split["val_fraction"]))
                    perm = np.random.default_rng(split["split_seed"]).permutation(len(docs))
                    orders: dict[str, np.ndarray | None] = {"train": perm[n_val:], "val": perm[:n_val]}
                else:
                    orders = {"all": None}
                meta: dict[str, Any] = {
                    "version": CACHE_VERSION,
                    "files": [str(f) for f in files],
                    "splits": {},
                    "dropped_rows": dropped,
                }
                for name, order in orders.items():
                    meta["splits"][name] = write_token_stream(
                        ids, order, work / name, tok.sep_token_id, tok.unk_token_id, len(tok), lengths
                    )
                shutil.rmtree(work / "hf", ignore_errors=True)
                meta["checksums"] = _checksums(work, names)  # read back right after writing: still in the page cache
                meta = json.loads(json.dumps(meta))  # as it reads back (tuples become lists): what the digest covers
                meta["meta_blake2b"] = _meta_digest(meta)
                (work / "meta.json").write_text(json.dumps(meta, indent=1))
                rels = sorted(meta["checksums"])
                try:
                    os.replace(work, final)  # atomic: a crash never leaves a half-built corpus under its key
                    built = True
                    _VERIFIED.add(_stamp(final, rels))  # just digested: this process need not read it again
                    self._metas[key] = meta
                except OSError:
                    if not (final / "meta.json").is_file():  # another process won the race: fine
                        raise
            except Exception as err:
                # A full disk or a read-only cache: one line, and nothing cached (the work folder goes below).
                explained = cache_write_error(err, final.parent, "the tokenized corpus")
                if explained is not None:
                    raise explained from err
                raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
                os.close(lock)
        if not built:
            return self.entry(corpus, repair)  # the entry another process built: check it like any
        return final
