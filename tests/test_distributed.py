"""Real multi-process runs on CPU (gloo), launched the ways the README documents: by Lightning itself, by torchrun
and by SLURM (its environment simulated: two "machines" on this one). No GPU needed; each run takes seconds."""

from __future__ import annotations

import csv
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlm_lightning.cli.lightning_cli import run_cli
from mlm_lightning.data import MLMDataModule
from tests.conftest import make_corpus

ROOT = Path(__file__).parents[1]
CPU_DDP = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.enable_model_summary", "false"]
TOKENIZING = "tokenizing "  # the log line of a cache miss (MLMDataModule._build)


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def csv_logger_config(tmp_path: Path) -> str:
    path = tmp_path / "csv_logger.yaml"
    path.write_text(
        "trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n"
        f"    init_args:\n      save_dir: {tmp_path / 'csv'}\n      name: run\n"
    )
    return str(path)


def logged(tmp_path: Path, key: str) -> list[float]:
    (metrics,) = (tmp_path / "csv").rglob("metrics.csv")
    with open(metrics) as fh:
        return [float(row[key]) for row in csv.DictReader(fh) if row.get(key)]


@pytest.mark.slow  # several processes (37, 23, 18 s idle): CI runs it, make test does not
def test_ddp_fit_matches_one_device(
    tiny_args: list[str], tmp_path: Path, corpus_file: Path, tokenizer_dir: Path
) -> None:
    """Two processes started by Lightning from the CLI: tokenization once, the step count and learning-rate
    schedule of accumulation over sharded data, and validation metrics equal to one device's."""
    val_file = tmp_path / "val.txt"
    val_file.write_text("\n".join(make_corpus(51, seed=11)) + "\n", encoding="utf-8")
    args = [
        *tiny_args,
        *["--data.val_files", f"[{val_file}]", "--data.eval_batch_size", "4"],
        *["--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--trainer.accumulate_grad_batches", "2"],
        *["--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1"],
        *["--trainer.limit_val_batches", "1.0", "--trainer.log_every_n_steps", "1"],
    ]
    ddp = run_process(
        [sys.executable, "-m", "mlm_lightning", "fit", *args, *CPU_DDP, "--trainer.devices", "2"]
        + ["--config", csv_logger_config(tmp_path)]
    )
    output = ddp.stdout + ddp.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    # Two corpora (train, val), each tokenized once: by rank 0 in prepare_data, never by rank 1.
    corpora = [p for p in (Path(os.environ["MLM_LIGHTNING_CACHE"]) / "corpora").iterdir()]
    assert len(corpora) == 2 and all((p / "meta.json").is_file() for p in corpora)
    assert output.count(TOKENIZING) == 2

    # The same data, on one device, in this process.
    dm = MLMDataModule(
        train_files=[str(corpus_file)],
        val_files=[str(val_file)],
        tokenizer=str(tokenizer_dir),
        max_seq_length=32,
        batch_size=8,
        eval_batch_size=4,
    )
    dm.setup("fit")
    n_train, n_val = len(dm.datasets["train"]), len(dm.datasets["val"])
    assert n_val % 2 == 1 and math.ceil(n_val / 2) % 4  # uneven shards with a partial last batch: the hard case

    # Optimizer steps: each device steps over ceil(rows / 2) rows, in batches of 8, two batches per step.
    steps = math.ceil(math.ceil(math.ceil(n_train / 2) / 8) / 2)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == steps and ckpt["lr_schedulers"][0]["last_epoch"] == steps
    # The linear schedule spans exactly those steps: warmed up to the peak, still above zero at the last one.
    lrs = logged(tmp_path, "train/lr/pg1")
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] > 0

    # Validation perplexity under DDP = one device's on the same data and masks: no row counted twice.
    cli = run_cli([*args, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"], run=False)
    ckpt_path = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    single = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    assert logged(tmp_path, "val/loss")[-1] == pytest.approx(single["val/loss"], rel=1e-5)
    assert logged(tmp_path, "val/perplexity")[-1] == pytest.approx(single["val/perplexity"], rel=1e-5)
    assert logged(tmp_path, "val/accuracy")[-1] == pytest.approx(single["val/accuracy"], abs=1e-6)


@pytest.mark.slow  # several processes (37, 23, 18 s idle): CI runs it, make test does not
def test_torchrun_launch(tiny_args: list[str], tmp_path: Path) -> None:
    """torchrun starts the processes and Lightning joins them (TorchElasticEnvironment), as on several machines."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = run_process([*cmd, "-m", "mlm_lightning", "fit", *tiny_args, *CPU_DDP, "--trainer.devices", "2"])
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and output.count(TOKENIZING) == 1  # train+val: one corpus
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 12


@pytest.mark.slow  # several processes (37, 23, 18 s idle): CI runs it, make test does not
def test_slurm_two_nodes_tokenize_once(tiny_args: list[str], tmp_path: Path) -> None:
    """What srun does on two machines with a shared file system: one process each, SLURM variables set.
    With data.prepare_data_per_node=false only global rank 0 tokenizes."""
    base = {
        **os.environ,
        "SLURM_JOB_NAME": "mlm",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "2",
        "SLURM_LOCALID": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    cmd = [sys.executable, "-m", "mlm_lightning", "fit", *tiny_args, *CPU_DDP, "--trainer.max_steps", "4"]
    cmd += ["--trainer.devices", "1", "--trainer.num_nodes", "2", "--data.prepare_data_per_node", "false"]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**base, "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    assert outputs[0].count(TOKENIZING) == 1 and TOKENIZING not in outputs[1]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


@pytest.mark.parametrize("overlay", sorted((ROOT / "configs" / "scale").glob("*.yaml")), ids=lambda p: p.name)
def test_scale_overlays_parse(overlay: Path, capsys) -> None:
    import yaml

    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(ROOT / "configs" / "base.yaml"), "--config", str(overlay), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"] and printed["trainer"]["accelerator"] == "gpu"


def test_too_few_validation_rows_for_the_devices_is_a_clear_error(
    tmp_path: Path, corpus_file: Path, tokenizer_dir: Path
) -> None:
    """A device without a validation batch would skip the metric sync that the others wait in: refuse early."""
    from types import SimpleNamespace

    from mlm_lightning.errors import MLMError

    val_file = tmp_path / "val.txt"
    val_file.write_text("the king.\n", encoding="utf-8")
    dm = MLMDataModule(
        train_files=[str(corpus_file)], val_files=[str(val_file)], tokenizer=str(tokenizer_dir), max_seq_length=32
    )
    dm.setup("fit")
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2)
    with pytest.raises(MLMError, match="val split has 1 rows for 2 devices"):
        dm.val_dataloader()
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)
    assert len(dm.val_dataloader()) == 1
