"""The tokenization cache: one folder per corpus, named by a hash of everything that changes its tokens.

An entry ``<cache_dir>/corpora/<key>`` holds one flat token stream per split (``tokens.npy``, ``doc_offsets.npy``)
and ``meta.json`` (statistics, sizes and digests of the stream files, and a digest of its own content). The key
(:meth:`CorpusCache.key`) covers the files' contents, the tokenizer (:func:`tokenizer_fingerprint`), the text
settings and :data:`CACHE_VERSION`; change what goes into it there. An entry is written into a temporary folder and
renamed into place (a crash never leaves half an entry), and checked before use (``meta.json`` and sizes always,
the stream files' digests once per process: :mod:`.cache_entry`), so a damaged entry is rebuilt or named, never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from mlm_lightning.data.cache_entry import (
    VERIFIED,
    discard_entry,
    entry_problem,
    files_stamp,
    hold_work_folder,
    meta_digest,
    remove_stale_work,
    stream_checksums,
)
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

    def folder(self, split: str) -> str:
        """The folder that holds ``split``: ``train``/``val`` of a held-out split, else ``all``."""
        if not self.split:
            return "all"
        return "train" if split == "train" else "val"


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
            problem, meta = entry_problem(final, names, CACHE_VERSION)
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
                discard_entry(final)
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
        lock = hold_work_folder(work)  # while this process lives: a later run removes the folder once it is dead
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
                meta = {
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
                meta["checksums"] = stream_checksums(work, names)  # read right after writing: in the page cache
                meta = json.loads(json.dumps(meta))  # as it reads back (tuples become lists): what the digest covers
                meta["meta_blake2b"] = meta_digest(meta)
                (work / "meta.json").write_text(json.dumps(meta, indent=1))
                rels = sorted(meta["checksums"])
                try:
                    os.replace(work, final)  # atomic: a crash never leaves a half-built corpus under its key
                    built = True
                    VERIFIED.add(files_stamp(final, rels))  # just digested: this process need not read it again
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
