"""Memory of a training run: freed tensor buffers go back to the system; no worker is forked mid-run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlm_lightning.data import MLMDataModule

ROOT = Path(__file__).parents[1]

# Frees an 8 MiB block, asks for one again and prints whether the second one has its own mapping (glibc's
# mallinfo2: hblkhd = bytes in mmapped blocks). glibc's dynamic threshold puts the second one on the heap.
_REALLOC = """
import ctypes, sys
from mlm_lightning.callbacks.memory import limit_heap_growth
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in FIELDS.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert limit_heap_growth()
libc.free(libc.malloc(8 << 20))
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblkhd >= 8 << 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_freed_large_buffers_return_to_the_system() -> None:
    def own_mapping(mode: str) -> bool:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", _REALLOC, mode], capture_output=True, text=True, env=env, check=True
        )
        return out.stdout.strip() == "True"

    assert not own_mapping("default")  # what the fix is for: glibc alone keeps the block in the heap
    assert own_mapping("fixed")


def test_only_training_uses_workers(corpus_file: Path, tokenizer_dir: Path) -> None:
    dm = MLMDataModule(
        train_files=[str(corpus_file)], tokenizer=str(tokenizer_dir), max_seq_length=32, batch_size=8, num_workers=1
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert dm.train_dataloader().num_workers == 1 and dm.train_dataloader().persistent_workers
    # A validation worker forked from the trainer came to hold 1.6 GB of copied pages in base.yaml.
    assert dm.val_dataloader().num_workers == 0 and dm.test_dataloader().num_workers == 0


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_python_api_runs_get_the_fixed_threshold(tiny_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A run started from Python (run_cli(run=False) + trainer.fit, as the benchmarks do) trained under glibc's
    # dynamic threshold: 400-600 MB more peak memory and other step times than the same run from the CLI.
    from mlm_lightning.callbacks import memory as allocator
    from mlm_lightning.cli.lightning_cli import run_cli

    calls: list[int] = []
    monkeypatch.setattr(allocator, "limit_heap_growth", lambda threshold=allocator.MMAP_THRESHOLD: calls.append(1))
    cli = run_cli(["--trainer.max_steps", "1", *tiny_args, "--memory.limit_heap", "true"], run=False)
    built = len(calls)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(calls) == built + 1  # set up again by the run itself


# 2,000 blocks of 64 KiB (below the mmap threshold: on the heap), all freed but the last, which pins the heap's
# top so that free() alone cannot shrink it; prints the RSS given back by release_free_heap, in MB.
_TRIM = """
import ctypes, sys
from pathlib import Path
from mlm_lightning.callbacks.memory import limit_heap_growth, release_free_heap
def rss():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
assert limit_heap_growth()
blocks = [libc.malloc(64 << 10) for _ in range(2000)]
for b in blocks:
    ctypes.memset(b, 1, 64 << 10)
for b in blocks[:-1]:
    libc.free(b)
before = rss()
if sys.argv[1] == "trim":
    assert release_free_heap()
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.slow  # a whole run / a subprocess: CI (make test-all) runs it, make test does not
def test_release_free_heap_gives_freed_small_buffers_back() -> None:
    def given_back(mode: str) -> float:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", _TRIM, mode], capture_output=True, text=True, env=env, check=True)
        return float(out.stdout.strip())

    assert given_back("keep") < 10  # the freed 125 MB stay in the process
    assert given_back("trim") > 100


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_runs_trim_the_heap_every_few_steps_and_after_validation(
    tiny_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlm_lightning.callbacks import memory as allocator
    from mlm_lightning.cli.lightning_cli import run_cli

    trims: list[int] = []
    cli = run_cli([*tiny_args, "--memory.limit_heap", "true"], run=False)
    monkeypatch.setattr(allocator, "release_free_heap", lambda: trims.append(cli.trainer.global_step) or True)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert allocator.TRIM_EVERY == 10
    assert trims == [6, 10, 12, 12]  # validations at steps 6 and 12, step 10, and the end of training


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_by_default_the_heap_is_trimmed_between_phases_only(
    tiny_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlm_lightning.callbacks import memory as allocator
    from mlm_lightning.cli.lightning_cli import run_cli

    trims: list[int] = []
    cli = run_cli(tiny_args, run=False)
    monkeypatch.setattr(allocator, "release_free_heap", lambda: trims.append(cli.trainer.global_step) or True)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert trims == [6, 12, 12]  # after each validation and when training ends; never between steps
    trims.clear()
    cli = run_cli([*tiny_args, "--memory.release_between_phases", "false"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert trims == []


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_glibc_is_left_alone_unless_asked(tiny_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlm_lightning.callbacks import memory as allocator
    from mlm_lightning.cli import lightning_cli as cli_lib
    from mlm_lightning.cli.lightning_cli import run_cli

    calls: list[str] = []
    monkeypatch.setattr(allocator, "limit_heap_growth", lambda threshold=0: calls.append("limit") or True)
    monkeypatch.setattr(cli_lib, "limit_heap_growth", lambda threshold=0: calls.append("limit") or True)
    monkeypatch.setattr(allocator, "release_free_heap", lambda: calls.append("trim") or True)
    cli = run_cli([*tiny_args, "--memory.release_between_phases", "false"], run=False)  # off by default
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 12 and calls == []
    cli = run_cli([*tiny_args, "--memory.limit_heap", "true"], run=False)
    assert calls == ["limit"]  # from the parsed command line on, before the model loads


def test_base_config_takes_the_fast_path() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    # The fixed threshold cost base.yaml a third of its speed for 356 MB (issue 20): never on by default.
    assert config.get("memory", {}).get("limit_heap", False) is False
