"""``MLMDataModule``: the data settings, and the Lightning hooks that hand the work to the modules beside it.

Text is read (:mod:`.reading`), tokenized once into the cache (:mod:`.cache`, :mod:`.token_stream`), served as rows
(:mod:`.rows`) in a resumable order (:mod:`.sampling`, :mod:`.loaders`), masked by ``data.masking`` (:mod:`.masking`)
and cut by ``data.sequence_warmup`` (:mod:`.sequence_warmup`); or, with ``data.streaming``, streamed from shard sets
(:mod:`.shards`, :mod:`.streaming`). Settings that span several values are checked in :mod:`.checks`; what a
checkpoint records of the data, in :mod:`.identity`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader

from mlm_lightning.data.cache import Corpus, CorpusCache
from mlm_lightning.data.checks import (
    check_scorable,
    check_streaming,
    check_val_set_names,
    holds_out,
    masking_config,
    masking_strategy,
)
from mlm_lightning.data.collator import MLMCollator
from mlm_lightning.data.identity import check_resume, data_identity
from mlm_lightning.data.loaders import rows_loader, stream_loader
from mlm_lightning.data.masking import MaskingStrategy, TokenMasking
from mlm_lightning.data.rows import TokenRows
from mlm_lightning.data.sequence_warmup import SequenceWarmup
from mlm_lightning.data.streaming import ShardSet, StreamingRows, checked_manifests
from mlm_lightning.errors import MLMError
from mlm_lightning.family_config import special_token_ids
from mlm_lightning.io.sources import default_cache_dir
from mlm_lightning.settings import ClosedUnitInterval, NonNegativeInt, PositiveInt, SequenceLength


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
        sequence_warmup: Off by default; ``{start_length: 32, steps: 100}``: training rows, cut from whole masked
            rows, grow from 32 tokens to ``max_seq_length`` over the first 100 batches (the same tokens per step).
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
        sequence_warmup: SequenceWarmup = SequenceWarmup(),  # noqa: B008 (a frozen record)
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
        if holds_out(val_files) and not 0.0 < val_fraction < 1.0:
            raise MLMError(
                f"data.val_fraction must be in (0, 1) when data.val_files is unset (or maps a name to null: that "
                f"set is held out of the training files), got {val_fraction}"
            )
        self.streaming = [s if isinstance(s, ShardSet) else ShardSet(**s) for s in streaming or []]
        if self.streaming:
            self.hparams["streaming"] = [vars(s).copy() for s in self.streaming]  # plain data for checkpoints
            check_streaming(self.streaming, train_files, val_files)
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
        self.masking = masking_strategy(masking)
        if isinstance(self.hparams.get("masking"), MaskingStrategy):  # from Python: an object
            self.hparams["masking"] = masking_config(self.masking)  # checkpoints hold plain data only
        self.sequence_warmup = SequenceWarmup.checked(sequence_warmup, max_seq_length)
        self.hparams["sequence_warmup"] = asdict(self.sequence_warmup)  # checkpoints hold plain data only
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.datasets: dict[str, TokenRows | StreamingRows] = {}
        self.resume_with_changed_data = resume_with_changed_data
        self._identity: dict[str, Any] | None = None
        self._resume_checked = False
        self._restart_epoch = False  # resumed on other data: the old position in the epoch means nothing
        self._manifests: list[tuple[str, float, dict[str, Any]]] | None = None  # data.streaming's, checked once

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
        """What defines the data a run trains on, by setting (:func:`~mlm_lightning.data.identity.data_identity`)."""
        return data_identity(
            self.corpora.get("train"),
            self.cache.digests,
            self.tokenizer_name,
            self.tokenizer,
            self.text_layout,
            self.layout,
            self.max_seq_length,
            self.masking,
        )

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
        """Compares the checkpoint's :meth:`data_identity` with this configuration's, once
        (:func:`~mlm_lightning.data.identity.check_resume`: an error, or one warning and a new epoch)."""
        if not saved or self._resume_checked:
            return
        self._resume_checked = True
        current = self.state_dict()["identity"]
        self._restart_epoch = check_resume(saved, current, checkpoint, self.resume_with_changed_data)

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
            **meta["splits"][corpus.folder(split)],
            "null_rows": dropped.get("null_rows"),
            "non_text_rows": dropped.get("non_text_rows"),
        }

    def split_rows(self, split: str) -> TokenRows:
        """The rows of a split (``train``, ``val``, ``val/<name>``, ``test``) over its cache entry, which must exist."""
        corpus = self.corpora[split]
        # Not repaired here: under DDP every process sets up, and only the preparing one may rebuild.
        folder = self.cache.entry(corpus, repair=False) / corpus.folder(split)
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
        """Raises :class:`MLMError` naming the files unless validation masks a token of ``split``: evaluation masks
        are fixed, so it is known before training (:func:`~mlm_lightning.data.checks.check_scorable`)."""
        special = self.tokenizer.all_special_ids
        check_scorable(self.split_rows(split), self.collator(train=False), special, self.corpora[split], split, chunk)

    def manifests(self) -> list[tuple[str, float, dict[str, Any]]]:
        """``(url, weight, manifest)`` of every ``data.streaming`` set, checked against this run's settings."""
        if self._manifests is None:
            self._manifests = checked_manifests(
                self.streaming,
                self.tokenizer,
                self.tokenizer_name,
                self.layout,
                self.max_seq_length,
                self.stream_retries,
            )
        return self._manifests

    def stream(self) -> StreamingRows:
        """This device's streamed training rows (``data.streaming``)."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return StreamingRows(
            self.manifests(), self.seed, rank, world, self.batch_size, self.stream_retries, self.stream_wait
        )

    # -- loaders ----------------------------------------------------------------------------------------
    def collator(self, train: bool) -> MLMCollator:
        """The masking collator of ``data.masking``; validation and test use a different, fixed seed stream."""
        collator = self.masking.collator(self.tokenizer, self.seed, train)
        return collator.with_sequence_warmup(self.sequence_warmup, self.max_seq_length) if train else collator

    def loader(self, split: str) -> DataLoader:
        """The dataloader of one split that :meth:`setup` has loaded: ``train``, a validation split, ``test``."""
        rows, train = self.datasets[split], split == "train"
        if isinstance(rows, StreamingRows):
            return stream_loader(rows, self.batch_size, self.collator(True), self.trainer)
        return rows_loader(
            rows,
            split,
            self.batch_size if train else self.eval_batch_size,
            self.collator(train),
            self.seed,
            self.num_workers,
            self.trainer,
            lengths=rows.row_lengths() if self.layout == "line_by_line" else None,
            keep_position=not self._restart_epoch,
        )

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
        world = self.trainer.world_size if self.trainer is not None else 1
        return math.ceil(math.ceil(len(self.datasets["train"]) / world) / self.batch_size)


# The name configs, saved configs and checkpoints' class paths use (and pickles resolve): the package's, not the file's.
MLMDataModule.__module__ = "mlm_lightning.data"
