"""The corpus report: what the tokenized data looks like, and warnings for what usually means a mistake.

Printed before training (:class:`mlm_lightning.callbacks.CorpusReport`) and by
``python -m mlm_lightning inspect --config ...`` (:mod:`mlm_lightning.cli.inspect`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from mlm_lightning.data import MLMDataModule
from mlm_lightning.data.rows import TokenRows
from mlm_lightning.data.sampling import MLMSampler


@dataclass
class SplitStats:
    """Statistics of one split as the model sees it in one epoch.

    Attributes:
        documents: Non-blank documents.
        tokens: Tokens of the text (special tokens excluded).
        unk_tokens: Tokens that are the tokenizer's unknown token.
        longest_document: Tokens of the longest document.
        split_documents: Documents cut across more than one row (windows in ``line_by_line``, block
            boundaries in ``packed``).
        rows: Rows (blocks in ``packed``) per epoch.
        batches: Batches per epoch on one device.
        row_tokens: Tokens in those rows, special tokens included.
        padding_share: Share of the batches' positions that are padding (first epoch's order, one device).
        null_rows: Rows of the split's ``.jsonl``/``.csv``/``.parquet`` files whose text was null (dropped);
            ``None`` when counted under another split (validation held out of the training files).
        non_text_rows: Rows whose text was not a string, a number for instance (dropped); ``None`` likewise.
    """

    documents: int
    tokens: int
    unk_tokens: int
    longest_document: int
    split_documents: int
    rows: int
    batches: int
    row_tokens: int
    padding_share: float
    null_rows: int | None = None
    non_text_rows: int | None = None

    @property
    def unk_rate(self) -> float:
        return self.unk_tokens / max(1, self.tokens)


def split_stats(dm: MLMDataModule, split: str) -> SplitStats:
    """Statistics of ``split`` (``train``, ``val`` or ``val/<name>``) of a data module that has been set up."""
    rows = cast(TokenRows, dm.datasets[split])  # a tokenized split: the report needs its files
    meta = dm.corpus_meta(split)
    offsets = np.load(rows.folder / "doc_offsets.npy")
    starts, ends = offsets[:-1], offsets[1:]  # each document's span in the stream, its trailing [SEP] included
    if dm.layout == "packed":
        block = dm.max_seq_length - 1
        split_docs = int((starts // block != (ends - 1) // block).sum())
    else:
        split_docs = int((ends - 1 - starts > dm.max_seq_length - 2).sum())
    loader = dm.loader(split)
    lengths = rows.row_lengths()
    served = lengths[cast(MLMSampler, loader.sampler).shard(0)]  # the order batches are formed in, so padding is exact
    firsts = np.arange(0, len(served), loader.batch_size)
    padded = int((np.maximum.reduceat(served, firsts) * np.diff(np.append(firsts, len(served)))).sum())
    return SplitStats(
        documents=int(meta["documents"]),
        tokens=int(meta["tokens"]),
        unk_tokens=int(meta["unk_tokens"]),
        longest_document=int(meta["longest_document"]),
        split_documents=split_docs,
        rows=len(rows),
        batches=len(firsts),
        row_tokens=int(lengths.sum()),
        padding_share=float(1.0 - served.sum() / max(1, padded)),
        null_rows=meta.get("null_rows"),
        non_text_rows=meta.get("non_text_rows"),
    )


def corpus_report(dm: MLMDataModule) -> dict[str, SplitStats]:
    """Training and validation statistics (each named validation set a column); prepares and sets up ``dm``."""
    splits = ["train", *dm.val_splits]
    if not set(splits) <= dm.datasets.keys():
        dm.prepare_data()
        dm.setup("fit")
    if getattr(dm, "streaming", None):  # streamed training rows: their sources' table, see streaming_sources
        splits = splits[1:]
    return {split: split_stats(dm, split) for split in splits}


def streaming_sources(dm: MLMDataModule) -> str:
    """The streamed sources (``data.streaming``) as a Markdown table: each set's shards, rows, tokens and share."""
    sets = dm.manifests()
    total = sum(weight for _, weight, _ in sets)
    rows = dm.datasets["train"]
    lines = [
        f"streamed training rows: {len(rows):,} per epoch on each device ({len(rows) // dm.batch_size:,} batches)",
        "",
        "| source | shards | documents | tokens | rows | weight: share of rows drawn |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for url, weight, manifest in sets:
        lines.append(
            f"| {url} | {len(manifest['shards']):,} | {manifest['documents']:,} | {manifest['tokens']:,} | "
            f"{manifest['rows']:,} | {100 * weight / total:.1f}% |"
        )
    return "\n".join(lines)


def format_report(stats: dict[str, SplitStats], dm: MLMDataModule) -> str:
    """A Markdown table (readable as plain text, and rendered by TensorBoard's text panel)."""
    unit = "blocks" if dm.layout == "packed" else "rows"
    split_label = "documents split across blocks" if dm.layout == "packed" else "documents split into windows"
    lines = [
        f"corpus report: layout {dm.layout}, max_seq_length {dm.max_seq_length}, "
        f"batch size {dm.batch_size} (validation {dm.eval_batch_size})",
        "",
        "| | " + " | ".join(stats) + " |",
        "| --- |" + " ---: |" * len(stats),
    ]
    fields = [
        ("documents", lambda s: f"{s.documents:,}"),
        (
            "rows dropped: not text / null",
            lambda s: "(in train)" if s.null_rows is None else f"{s.non_text_rows:,} / {s.null_rows:,}",
        ),
        ("tokens", lambda s: f"{s.tokens:,}"),
        ("unknown-token rate", lambda s: f"{100 * s.unk_rate:.2f}%"),
        (split_label, lambda s: f"{s.split_documents:,}"),
        ("padding share", lambda s: f"{100 * s.padding_share:.2f}%"),
        (f"{unit} per epoch", lambda s: f"{s.rows:,}"),
        ("batches per epoch (one device)", lambda s: f"{s.batches:,}"),
        ("tokens per epoch", lambda s: f"{s.row_tokens:,}"),
    ]
    lines += [f"| {name} | " + " | ".join(fmt(s) for s in stats.values()) + " |" for name, fmt in fields]
    if getattr(dm, "streaming", None):
        lines += ["", streaming_sources(dm)]
    return "\n".join(lines)


def report_warnings(
    stats: dict[str, SplitStats],
    dm: MLMDataModule,
    max_positions: int | None,
    max_unk_rate: float = 0.01,
    max_document_share: float = 0.5,
) -> list[str]:
    """What in the statistics usually means a mistake, as sentences that say what to check."""
    warnings = []
    for split, s in stats.items():
        if s.unk_rate > max_unk_rate:
            warnings.append(
                f"{100 * s.unk_rate:.1f}% of the {split} tokens are {dm.tokenizer.unk_token} (above "
                f"{100 * max_unk_rate:g}%): the tokenizer does not cover this text (another language or script?). "
                f"Use a tokenizer that does, or train one with `python -m mlm_lightning train-tokenizer`."
            )
        if s.non_text_rows or s.null_rows:
            warnings.append(
                f"{s.non_text_rows:,} rows of the {split} files are not text (numbers, booleans, objects) and "
                f"{s.null_rows:,} are null: they were dropped. Check data.text_column (now '{dm.text_column}'), "
                f"or set data.non_text_rows=error to find them"
            )
    train = stats.get("train")  # absent when the training rows are streamed (checked when they were sharded)
    share = train.longest_document / max(1, train.tokens) if train else 0.0
    if share > max_document_share:
        warnings.append(
            f"one document holds {100 * share:.0f}% of the training text: check data.text_layout "
            f"(now '{dm.text_layout}'; 'line' or 'paragraph' split .txt files into documents) and the files' "
            f"line breaks, or set data.val_files"
        )
    if max_positions and dm.max_seq_length > max_positions:
        warnings.append(
            f"data.max_seq_length={dm.max_seq_length} is above the {max_positions} tokens the model's position "
            f"embeddings take: "
            f"lower data.max_seq_length (fit refuses it)"
        )
    return warnings


def model_max_positions(model_config: dict) -> int | None:
    """The longest row the model a ``model`` config section describes takes (``None`` if unknown).

    The same rule as ``fit``'s check: :func:`mlm_lightning.families.max_sequence_length`.
    """
    from mlm_lightning.families import max_sequence_length

    name = model_config.get("model_name_or_path")
    if not name:
        return max_sequence_length(model_config) or None
    from mlm_lightning.errors import MLMError
    from mlm_lightning.model.loading import load_model_config

    try:
        return max_sequence_length(load_model_config(name)) or None
    except MLMError:  # a hub name offline: the report goes on without this check (fit says why it cannot load)
        return None


# (metric, label, format) of the rows of :func:`before_after_table` and of the model card.
METRIC_LABELS = (
    ("loss", "loss", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("accuracy", "masked-token accuracy", "{:.2%}"),
)


def metric_sets(metrics: dict[str, float]) -> list[str]:
    """The validation sets in a metrics record, in order: ``val``, or ``val/<name>`` for each named set."""
    return [key.removesuffix("/loss") for key in metrics if key.startswith("val/") and key.endswith("/loss")]


def before_after_table(base: dict[str, float], after: dict[str, float], step: int | str = "?") -> str:
    """Base and adapted model's validation figures side by side, for every validation set: a Markdown table.

    Both are measured on the same validation rows with the same fixed masks (``val/...`` metrics of the
    validation before the first step and of a later one).
    """
    sets = [s for s in metric_sets(after) if f"{s}/loss" in base]
    header, rule = ["|"], ["| --- |"]
    for prefix in sets:
        name = prefix.partition("/")[2] or "validation"
        header += [f" {name}: base model (step 0) |", f" {name}: adapted (step {step}) |"]
        rule += [" ---: |", " ---: |"]
    lines = [f"before and after: validation on the same rows and masks, base model vs this run at step {step}", ""]
    lines += ["| " + "".join(header), "".join(rule)]
    for key, label, fmt in METRIC_LABELS:
        cells = []
        for prefix in sets:
            cells += [_cell(base.get(f"{prefix}/{key}"), fmt), _cell(after.get(f"{prefix}/{key}"), fmt)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)
