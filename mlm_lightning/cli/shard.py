"""``python -m mlm_lightning shard``: a ``fit`` configuration's training text, tokenized into a verified shard set."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlm_lightning.errors import MLMError

HELP = """usage: python -m mlm_lightning shard --config CONFIG [fit options] --output FOLDER_OR_URL
                                   [--rows_per_shard N] [--workers N]

Reads data.train_files as fit does (every format, glob, URL and pkg://), tokenizes them into the local cache with
the same rules, and writes the training rows of data.layout and data.max_seq_length as verified shards (Parquet,
digests, manifest.json) to a folder or an object-store URL (s3://bucket/prefix, gs://..., az://...). An
interrupted run keeps the shards it finished: run the same command again. Stream them in fit with data.streaming.
"""


def shard_command(args: list[str]) -> int:
    """``shard``: the options above, then the ``fit`` configuration (``--config`` files and ``--data.*`` flags)."""
    if any(a in ("-h", "--help") for a in args):
        print(HELP)
        return 0
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--output")
    own.add_argument("--rows_per_shard", type=int, default=50_000)
    own.add_argument("--workers", type=int, default=1)
    try:
        opts, rest = own.parse_known_args(args)
    except SystemExit:
        raise MLMError("shard: --rows_per_shard and --workers take a whole number") from None
    if not opts.output:
        raise MLMError("shard: give --output, a folder or an object-store URL (s3://bucket/prefix)")
    if opts.rows_per_shard < 1 or opts.workers < 1:
        raise MLMError("shard: --rows_per_shard and --workers must be at least 1")
    from mlm_lightning.cli.config import parse_config
    from mlm_lightning.data import MLMDataModule
    from mlm_lightning.data.shards import write_shard_set

    config = parse_config(rest)
    data = config.data.as_dict()
    if data.get("streaming"):
        raise MLMError("shard: the configuration already streams (data.streaming): shard its data.train_files")
    dm = MLMDataModule(**data)
    output = opts.output if "://" in opts.output else str(Path(opts.output).expanduser().absolute())
    manifest = write_shard_set(dm, output, opts.rows_per_shard, opts.workers)
    print(
        f"{output}: {len(manifest['shards'])} shards, {manifest['rows']:,} rows of {manifest['layout']} "
        f"{manifest['max_seq_length']}, {manifest['tokens']:,} tokens from {manifest['documents']:,} documents"
    )
    return 0
