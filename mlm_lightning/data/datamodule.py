"""``MLMDataModule``: the data settings, and the Lightning hooks that hand the work to the modules beside it.

Text is read with ``datasets`` (:mod:`.reading`), tokenized once into a cache folder whose name is a hash of the
files' contents, the tokenizer and the text settings (:mod:`.cache`, :mod:`.token_stream`), served as rows of a
layout (:mod:`.rows`) in an order that survives a resume (:mod:`.sampling`), and masked by the masking strategy
``data.masking`` (:mod:`mlm_lightning.data.masking`). With ``data.streaming``, the training rows come instead from shard
sets in folders or object stores (:mod:`.shards`, written by ``python -m mlm_lightning shard``), streamed
(:mod:`.streaming`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from mlm_lightning.data.cache import Corpus, CorpusCache
from mlm_lightning.data.masking import MaskingStrategy, MLMCollator, TokenMasking
from mlm_lightning.data.rows import TokenRows
from mlm_lightning.data.sampling import MLMSampler, ResumableDataLoader
from mlm_lightning.data.streaming import ShardSet, StreamingDataLoader, StreamingRows
from mlm_lightning.errors import MLMError
from mlm_lightning.families import special_token_ids
from mlm_lightning.io.sources import default_cache_dir
from mlm_lightning.settings import ClosedUnitInterval, NonNegativeInt, PositiveInt, SequenceLength


def _strategy(masking: MaskingStrategy | Mapping[str, Any]) -> MaskingStrategy:
    """The masking strategy: as given, or built from its config (``{class_path, init_args}``, or
    ``TokenMasking``'s settings alone), which is what ``config.data.as_dict()`` and saved hyperparameters hold."""
    if isinstance(masking, MaskingStrategy):
        return masking
    if "class_path" not in masking:
        return TokenMasking(**masking)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--masking", type=MaskingStrategy)
    return parser.instantiate(parser.parse_object({"masking": dict(masking)})).masking


VAL_SET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_val_set_names(names: list[str]) -> None:
    """Raises :class:`MLMError` unless ``names`` can name validation sets (and their ``val/<name>/...`` tags)."""
    if not names:
        raise MLMError("data.val_files is an empty mapping: give at least one name, or a list of files")
    for name in names:
        if not VAL_SET_NAME.match(str(name)):
            raise MLMError(
                f"data.val_files: the validation set name '{name}' must be letters, digits, '_' or '-' "
                f"(it becomes part of the metric names val/<name>/loss...)"
            )


def _folder(split: str, corpus: Corpus) -> str:
    """The folder of a cache entry that holds ``split``: ``train``/``val`` of a held-out split, else ``all``."""
    if not corpus.split:
        return "all"
    return "train" if split == "train" else "val"


def _masking_config(masking: MaskingStrategy) -> dict[str, Any]:
    """A strategy as plain data, ``{class_path, init_args}``: what checkpoints and dashboards can hold."""
    cls = type(masking)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(vars(masking))}


def _check_streaming(sets: list[ShardSet], train_files: Any, val_files: Any) -> None:
    """Raises :class:`MLMError` unless ``data.streaming`` can replace the training files."""
    if train_files:
        raise MLMError("set data.train_files or data.streaming, not both (streaming replaces the training files)")
    held_out = not val_files or (isinstance(val_files, dict) and not all(val_files.values()))
    if held_out:
        raise MLMError(
            "data.streaming needs data.val_files (validation files; none may be null): a streamed corpus has no "
            "held-out share"
        )
    urls = [s.url for s in sets]
    if len(set(urls)) != len(urls):
        raise MLMError(f"data.streaming names a shard set twice: {', '.join(urls)}")
    for s in sets:
        if not s.weight > 0 or not math.isfinite(s.weight):
            raise MLMError(f"data.streaming: the weight of {s.url} must be a positive number, got {s.weight}")


def data_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two :meth:`MLMDataModule.data_identity` records, in words (empty: the same data)."""
    changes = []
    for key, old in saved.items():
        new = current.get(key)
        if key == "data.train_files":
            old_files, new_files = dict(map(tuple, old)), dict(map(tuple, new or []))
            kept, had = set(new_files.values()), set(old_files.values())
            if sorted(old_files.values()) == sorted(new_files.values()):
                continue  # the same content (files moved or renamed)
            what = [f"{f} changed" for f in old_files if f in new_files and old_files[f] != new_files[f]]
            what += [f"{f} left out" for f, d in old_files.items() if f not in new_files and d not in kept]
            what += [f"{f} added" for f, d in new_files.items() if f not in old_files and d not in had]
            changes.append(f"data.train_files: {', '.join(what) or 'their content changed'}")
        elif key == "data.tokenizer":
            if old[1] != (new or ["", ""])[1]:
                changes.append(f"data.tokenizer: {old[0]} -> {new[0]} (another vocabulary or other rules)")
        elif old != new:
            changes.append(f"{key}: {old} -> {new}")
    return changes


class MLMDataModule(L.LightningDataModule):
    """Reads, tokenizes (once, cached), packs and masks text for masked-language-model training.

    Args:
        train_files: Paths, globs, folders, ``pkg://package/path`` package data, or ``http(s)://`` URLs of
            ``.txt``, ``.jsonl``, ``.csv`` or ``.parquet`` files.
        val_files: Validation files (same forms). ``None`` holds out ``val_fraction`` of the documents. A mapping
            from a name to files gives several named validation sets, each logged as ``val/<name>/loss``,
            ``.../perplexity`` and ``.../accuracy`` (a list keeps ``val/loss``...); a name mapped to ``null`` is the
            held-out share. In YAML: ``val_files: {domain: null, general: [general.txt]}``.
        val_fraction: Share of training documents held out for validation (seeded) when ``val_files`` is unset.
        test_files: Files for ``test``; ``None`` tests on the validation split.
        text_layout: How ``.txt`` files split into documents: one per ``line``, one per ``paragraph``
            (blank-line separated), or one per ``file``.
        text_column: The text column of ``.jsonl``, ``.csv`` and ``.parquet`` files.
        non_text_rows: Rows of those files whose text is null, or not a string (a number, boolean or object;
            in a ``.csv``, a column whose every value reads as a number): ``warn`` drops them, counts them (one
            warning, and the corpus report) and carries on; ``error`` stops at the first (file, row, value).
        encoding_errors: ``strict`` stops at the first byte that is not UTF-8 (naming file and offset);
            ``replace`` reads such bytes in ``.txt`` files as U+FFFD, counts them (a warning per file and
            ``replaced_bytes``) and carries on. ``.jsonl``/``.csv`` files must be valid UTF-8 either way.
        tokenizer: Tokenizer name or path (``pkg://`` allowed). ``None`` uses the model's
            (``model.model_name_or_path``), which the command line fills in.
        layout: ``packed`` joins documents with ``[SEP]`` into full blocks (no padding); ``line_by_line``
            keeps one document per row (long ones split into windows), padding each batch to its longest row.
        max_seq_length: Tokens per row, special tokens included; at most the model's position embeddings.
        masking: The masking strategy: BERT's token masking (``TokenMasking``, its settings listed by
            ``--data.masking.help TokenMasking``) unless another ``MaskingStrategy`` subclass is given by
            ``class_path``. In YAML: ``masking: {mlm_probability: 0.3, whole_word_mask: true}``.
        batch_size: Rows per training batch on each device.
        eval_batch_size: Rows per validation/test batch; ``None`` uses ``batch_size``.
        num_workers: Dataloader worker processes for masking and collation of training batches (0 = in the
            training process; validation and test batches are always collated there).
        num_proc: Processes for tokenization (``datasets.map``); ``None`` tokenizes in this process.
        seed: Seed of the validation split, the shuffling and the masks (validation masks are fixed by it).
        cache_dir: Where tokenized corpora and downloads are kept; ``None`` = ``$MLM_LIGHTNING_CACHE`` or
            ``~/.cache/mlm_lightning``.
        prepare_data_per_node: Tokenize on the first process of every machine (``True``: machines do not share
            ``cache_dir``) or only on the first process of the whole job (``False``: a shared file system).
        streaming: Train on shard sets written by ``python -m mlm_lightning shard`` (folders or object-store URLs)
            instead of ``train_files``, streamed and mixed by weight. In YAML: ``streaming: [{url:
            s3://bucket/domain, weight: 0.7}, {url: s3://bucket/general, weight: 0.3}]``. Validation still reads
            ``val_files`` (required then). Streamed rows are read and masked in the training process
            (``num_workers`` is not used for them) and the stream's position goes into checkpoints.
        stream_retries: Tries after the first for every request to an object store (waiting 1, 2, 4... s),
            before the run stops with one line naming the shard (its last checkpoint intact).
        resume_with_changed_data: Resume (``--ckpt_path``) although what defines the training data differs from
            the checkpoint's (training files' content, tokenizer, text layout, layout, sequence length, masking):
            one warning lists the changes, and the new data is read from the start of an epoch (the checkpoint's
            position in the old data means nothing in it). Off: such a resume is an error naming the changes.

    From Python, on several devices, build the Trainer with ``use_distributed_sampler=False`` (the command line
    does): the data module's sampler shards the rows by itself, and Lightning's would shard them again.
    """

    def __init__(
        self,
        train_files: list[str] | None = None,
        val_files: list[str] | dict[str, list[str] | None] | None = None,
        val_fraction: ClosedUnitInterval = 0.05,
        test_files: list[str] | None = None,
        text_layout: Literal["line", "paragraph", "file"] = "line",
        text_column: str = "text",
        non_text_rows: Literal["warn", "error"] = "warn",
        encoding_errors: Literal["strict", "replace"] = "strict",
        tokenizer: str | None = None,
        layout: Literal["packed", "line_by_line"] = "packed",
        max_seq_length: SequenceLength = 128,
        masking: MaskingStrategy = TokenMasking(),  # noqa: B008 (jsonargparse reads a call as the class default)
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
        num_proc: PositiveInt | None = None,
        seed: NonNegativeInt = 1234,
        cache_dir: str | None = None,
        prepare_data_per_node: bool = True,
        streaming: list[ShardSet] | None = None,
        stream_retries: NonNegativeInt = 3,
        resume_with_changed_data: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # into checkpoints and the dashboard's hparams (export's model card reads them)
        self.prepare_data_per_node = prepare_data_per_node  # read by Lightning to pick the ranks that prepare
        if isinstance(val_files, dict):
            check_val_set_names(list(val_files))
        held_out = not val_files or (isinstance(val_files, dict) and not all(val_files.values()))
        if held_out and not 0.0 < val_fraction < 1.0:
            raise MLMError(
                f"data.val_fraction must be in (0, 1) when data.val_files is unset (or maps a name to null: that "
                f"set is held out of the training files), got {val_fraction}"
            )
        self.streaming = [s if isinstance(s, ShardSet) else ShardSet(**s) for s in streaming or []]
        if self.streaming:
            self.hparams["streaming"] = [vars(s).copy() for s in self.streaming]  # plain data for checkpoints
            _check_streaming(self.streaming, train_files, val_files)
        self.stream_retries = stream_retries
        self.stream_wait = 1.0  # seconds before the first retry (tests shorten it)
        self.train_files = train_files
        self.val_files = dict(val_files) if isinstance(val_files, dict) else val_files
        self.val_fraction = val_fraction
        self.test_files = test_files
        self.text_layout = text_layout
        self.text_column = text_column
        self.non_text_rows = non_text_rows
        self.encoding_errors = encoding_errors
        self.tokenizer_name = tokenizer
        self.layout = layout
        self.max_seq_length = max_seq_length
        self.masking = _strategy(masking)
        if isinstance(self.hparams.get("masking"), MaskingStrategy):  # from Python: an object
            self.hparams["masking"] = _masking_config(self.masking)  # checkpoints hold plain data only
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.datasets: dict[str, TokenRows] = {}
        self.resume_with_changed_data = resume_with_changed_data
        self._identity: dict[str, Any] | None = None
        self._resume_checked = False
        self._restart_epoch = False  # resumed on other data: the old position in the epoch means nothing

    @cached_property
    def tokenizer(self) -> Any:
        """The fast tokenizer (loaded on first use)."""
        from mlm_lightning.data.tokenizer import load_tokenizer

        if not self.tokenizer_name:
            raise MLMError("no tokenizer: set data.tokenizer, or model.model_name_or_path to a pretrained model")
        return load_tokenizer(self.tokenizer_name, setting="data.tokenizer")

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer's name or path as configured (what the model records for export)."""
        return self.tokenizer_name or ""

    @property
    def vocab_size(self) -> int:
        """Size of the tokenizer's vocabulary, added tokens included (linked to ``model.vocab_size``)."""
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's padding id (linked to ``model.pad_token_id``)."""
        return int(self.tokenizer.pad_token_id)

    @property
    def special_token_ids(self) -> dict[str, int]:
        """The tokenizer's special-token ids by config name, ``{"cls_token_id": 2, ...}`` (linked to
        ``model.special_token_ids``); roles the tokenizer has no token for are left out."""
        return special_token_ids(self.tokenizer)

    @property
    def val_names(self) -> list[str]:
        """The names of the validation sets, in order; empty for a single unnamed set (``val/loss``...)."""
        return list(self.val_files) if isinstance(self.val_files, dict) else []

    @property
    def val_splits(self) -> list[str]:
        """The validation splits' keys, in the order of the dataloaders: ``val``, or ``val/<name>`` for each set."""
        return [f"val/{name}" for name in self.val_names] or ["val"]

    # -- cache ------------------------------------------------------------------------------------------
    @cached_property
    def cache(self) -> CorpusCache:
        """The tokenization cache in ``cache_dir``, for this tokenizer and these text settings."""
        return CorpusCache(
            self.cache_dir,
            self.tokenizer,
            self.text_layout,
            self.text_column,
            self.non_text_rows,
            self.encoding_errors,
            self.num_proc,
        )

    @cached_property
    def corpora(self) -> dict[str, Corpus]:
        """The cache entries this configuration needs, by split (hashes the files once per instance)."""
        return self.cache.corpora(self.train_files, self.val_files, self.test_files, self.val_fraction, self.seed)

    @property
    def replaced_bytes(self) -> dict[str, int]:
        """File -> bytes read as U+FFFD (``encoding_errors=replace``), counted while hashing the files."""
        self.corpora  # noqa: B018 (hashing the files counts them)
        return self.cache.replaced_bytes

    def data_identity(self) -> dict[str, Any]:
        """What defines the data a run trains on, by setting: recorded in checkpoints, compared on resume.

        The training files' content digests (not their paths: a moved file is the same data), the tokenizer's
        fingerprint (its vocabulary and rules, not its name), the text layout, the row layout, the sequence length,
        the masking strategy and, for a held-out validation share, what decides which documents are held out.
        """
        from mlm_lightning.data.cache import tokenizer_fingerprint

        train = self.corpora.get("train")
        identity: dict[str, Any] = {
            "data.train_files": [[str(f), self.cache.digests.get(str(f), "")] for f in train.files] if train else [],
            "data.tokenizer": [self.tokenizer_name or "", tokenizer_fingerprint(self.tokenizer)],
            "data.text_layout": self.text_layout,
            "data.layout": self.layout,
            "data.max_seq_length": self.max_seq_length,
            "data.masking": _masking_config(self.masking),
        }
        if train is not None and train.split:
            identity["data.val_fraction"] = train.split.get("val_fraction")
            identity["data.seed"] = train.split.get("split_seed")
        return identity

    def state_dict(self) -> dict[str, Any]:
        """What Lightning saves of the data module in every checkpoint: :meth:`data_identity`, computed once."""
        if self._identity is None:
            self._identity = self.data_identity()
        return {"identity": self._identity}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume: refuses data that differ from the checkpoint's, or (allowed) warns and restarts the epoch.

        Only ``fit`` continues a run: ``validate``/``test`` may score a checkpoint on any data.
        """
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            self.check_resumed_data(state_dict.get("identity"), "the checkpoint")

    def check_resumed_data(self, saved: dict[str, Any] | None, checkpoint: str) -> None:
        """Compares the checkpoint's :meth:`data_identity` with this configuration's (once per data module).

        Raises:
            MLMError: Naming each change, unless ``resume_with_changed_data`` is set (then one warning, and the
                training data is read from the start of an epoch).
        """
        if not saved or self._resume_checked:
            return
        self._resume_checked = True
        changes = data_changes(saved, self.state_dict()["identity"])
        if not changes:
            return
        if not self.resume_with_changed_data:
            raise MLMError(
                f"the data differ from those {checkpoint} was trained on: {'; '.join(changes)}. Resume with the "
                f"same data, or set data.resume_with_changed_data=true to continue on these on purpose"
            )
        self._restart_epoch = True
        rank_zero_warn(
            f"resuming {checkpoint} on other data (data.resume_with_changed_data): {'; '.join(changes)}. The "
            f"new training data are read from the start of an epoch"
        )

    def prepare_data(self) -> None:
        """Tokenizes every needed corpus into the cache (runs on one process per machine)."""
        for corpus in {c.key: c for c in self.corpora.values()}.values():
            self.cache.entry(corpus)
        # Here, before Lightning's setup hook creates the loggers' files: a set that cannot be scored writes nothing.
        for split in [*self.val_splits, *(["test"] if self.test_files else [])]:
            self.check_scorable(split)

    def corpus_meta(self, split: str) -> dict[str, Any]:
        """Statistics of a split (``train``, ``val``, ``test``) as recorded when it was tokenized.

        ``null_rows`` and ``non_text_rows`` count the rows of the split's files that were dropped (see
        ``non_text_rows``); a split held out of the training files (``val_fraction``) reports ``None`` for them,
        as they are counted under ``train``.
        """
        corpus = self.corpora[split]
        meta = self.cache.meta(corpus)
        dropped = meta.get("dropped_rows", {}) if split == "train" or not corpus.split else {}
        return {
            **meta["splits"][_folder(split, corpus)],
            "null_rows": dropped.get("null_rows"),
            "non_text_rows": dropped.get("non_text_rows"),
        }

    def split_rows(self, split: str) -> TokenRows:
        """The rows of a split (``train``, ``val``, ``val/<name>``, ``test``) over its cache entry, which must exist."""
        corpus = self.corpora[split]
        # Not repaired here: under DDP every process sets up, and only the preparing one may rebuild.
        folder = self.cache.entry(corpus, repair=False) / _folder(split, corpus)
        tok = self.tokenizer
        return TokenRows(folder, self.layout, self.max_seq_length, tok.cls_token_id, tok.sep_token_id)

    def setup(self, stage: str | None = None) -> None:
        """Memory-maps the tokenized splits that ``stage`` needs."""
        vals = self.val_splits
        wanted = {"fit": ["train", *vals], "validate": vals, "test": ["test"], "predict": vals[:1]}
        for split in wanted.get(stage or "fit", ["train", *vals]):
            if split == "train" and self.streaming:
                self.datasets.setdefault("train", self.stream())
                if len(self.datasets["train"]) == 0:
                    raise MLMError(
                        f"the streamed shard sets hold fewer than data.batch_size={self.batch_size} rows per device"
                    )
                continue
            if split == "train" and "train" not in self.corpora:
                raise MLMError("no training data: set data.train_files")
            if split == "test" and not self.test_files:
                self.datasets["test"] = self.datasets.get(vals[0]) or self.split_rows(vals[0])
            elif split not in self.datasets:
                self.datasets[split] = self.split_rows(split)
            if len(self.datasets[split]) == 0:
                raise MLMError(f"the {split} split is empty")

    def check_scorable(self, split: str, chunk: int = 256) -> None:
        """Raises :class:`MLMError` naming the files unless validation masks at least one token of ``split``.

        Evaluation masks are fixed (seeded per example), so whether a set can be scored is known before training:
        a file holding only "a", "." or a byte-order mark and blank lines gives rows with nothing masked, and no
        loss at the first validation. Reads rows until the first masked token (the first chunk, for real text).
        """
        rows, collator = self.split_rows(split), self.collator(train=False)
        try:
            for start in range(0, len(rows), chunk):
                batch = collator([rows[i] for i in range(start, min(start + chunk, len(rows)))])
                if len(batch["masked_positions"]):
                    return
            special = set(self.tokenizer.all_special_ids)
            tokens = sum(int(t) not in special for i in range(len(rows)) for t in rows[i]["input_ids"])
        finally:
            rows.close()  # read once here; setup opens the set again
        corpus = self.corpora[split]
        files = ", ".join(str(f) for f in corpus.files)
        where = f"the validation share held out of {files}" if corpus.split else files
        raise MLMError(
            f"{where}: the {split} set cannot be scored: its {len(rows)} row(s) hold {tokens} token(s) that may be "
            f"masked and data.masking masks none of them, so it would have no loss. Give it more text "
            f"(a few sentences at least)"
        )

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def manifests(self) -> list[tuple[str, float, dict[str, Any]]]:
        """``(url, weight, manifest)`` of every ``data.streaming`` set, checked against this run's settings."""
        from mlm_lightning.data.cache import tokenizer_fingerprint
        from mlm_lightning.data.shards import read_manifest
        from mlm_lightning.data.streaming import check_shards

        if getattr(self, "_manifests", None) is None:
            fingerprint = tokenizer_fingerprint(self.tokenizer)
            found = []
            for s in self.streaming:
                manifest = read_manifest(s.url, self.stream_retries)
                if manifest["tokenizer"]["fingerprint"] != fingerprint:
                    raise MLMError(
                        f"{s.url} was tokenized with {manifest['tokenizer']['name']} (fingerprint "
                        f"{manifest['tokenizer']['fingerprint']}), not this run's tokenizer {self.tokenizer_name} "
                        f"({fingerprint}): set data.tokenizer to the shards', or shard the text with this one"
                    )
                if (manifest["layout"], manifest["max_seq_length"]) != (self.layout, self.max_seq_length):
                    raise MLMError(
                        f"{s.url} holds {manifest['layout']} rows of {manifest['max_seq_length']} tokens, this run "
                        f"wants {self.layout} rows of {self.max_seq_length}: set data.layout and "
                        f"data.max_seq_length to the shards', or shard the text again"
                    )
                check_shards(s.url, manifest, self.stream_retries)
                found.append((s.url, s.weight, manifest))
            self._manifests = found
        return self._manifests

    def stream(self) -> StreamingRows:
        """This device's streamed training rows (``data.streaming``)."""
        rank, world = self._rank_world()
        rows = StreamingRows(
            self.manifests(), self.seed, rank, world, self.batch_size, self.stream_retries, self.stream_wait
        )
        return rows

    # -- loaders ----------------------------------------------------------------------------------------
    def collator(self, train: bool) -> MLMCollator:
        """The masking collator of ``data.masking``; validation and test use a different, fixed seed stream."""
        return self.masking.collator(self.tokenizer, self.seed, train)

    def loader(self, split: str) -> DataLoader:
        """The dataloader of one split that :meth:`setup` has loaded: ``train``, a validation split, ``test``."""
        train = split == "train"
        rows = self.datasets[split]
        trainer = self.trainer
        if isinstance(rows, StreamingRows):
            # Read in this process: the position a checkpoint keeps is the stream's here (num_workers: unused).
            stream = StreamingDataLoader(
                rows, batch_size=self.batch_size, collate_fn=self.collator(True), pin_memory=torch.cuda.is_available()
            )
            if trainer is not None:
                stream.progress = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
                stream.current_epoch = lambda: trainer.current_epoch
            return stream
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if not train and len(rows) < world:  # a device with no batch would skip the metric sync the others wait in
            raise MLMError(
                f"the {split} split has {len(rows)} rows for {world} devices: every device needs at least one. "
                f"Use more {split} data, fewer devices or a smaller data.max_seq_length."
            )
        batch_size = self.batch_size if train else self.eval_batch_size
        # Bucketing only matters when rows differ in length (line_by_line); packed rows are all full.
        lengths = rows.row_lengths() if self.layout == "line_by_line" else None
        sampler = MLMSampler(
            len(rows),
            self.seed,
            shuffle=train,
            rank=rank,
            world_size=world,
            pad=train,
            batch_size=batch_size,
            lengths=lengths,
        )
        loader = (ResumableDataLoader if train else DataLoader)(
            rows,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.collator(train),
            # Evaluation collates in this process: a worker forked from the trainer mid-run (Lightning keeps it
            # until the next validation) ends up holding a private copy of every page the trainer rewrites.
            num_workers=self.num_workers if train else 0,
            persistent_workers=train and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        if train and trainer is not None:
            loader.progress = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if train and self._restart_epoch:
            loader.keep_position = False
        return loader

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader, or one per named validation set (Lightning's ``dataloader_idx`` is its place in the list)."""
        loaders = [self.loader(split) for split in self.val_splits]
        return loaders if self.val_names else loaders[0]

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.val_splits[0])

    def num_train_batches(self) -> int:
        """Training batches per epoch on one device, computed without building a dataloader."""
        if "train" not in self.datasets:
            self.setup("fit")
        if self.streaming:
            return len(self.datasets["train"]) // self.batch_size  # whole batches per device, by construction
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        return math.ceil(math.ceil(len(self.datasets["train"]) / world) / self.batch_size)
