"""Model FLOPs against torch's FLOP counter, device peaks, and the logged tokens/s and MFU."""

from __future__ import annotations

import json
import time
import types
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mlm_lightning.callbacks.throughput import Throughput
from mlm_lightning.data.masking import MLMCollator
from mlm_lightning.errors import MLMError
from mlm_lightning.model.head import step_flops
from mlm_lightning.model.module import MLMModule
from mlm_lightning.training import flops

VOCAB = 1000
SPECIALS = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask


def _collator() -> MLMCollator:
    return MLMCollator(pad_token_id=0, mask_token_id=4, vocab_size=VOCAB, special_token_ids=SPECIALS)


def _examples(lengths: list[int], seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"input_ids": np.concatenate([[2], rng.integers(5, VOCAB, n - 2), [3]]), "index": i, "epoch": 0}
        for i, n in enumerate(lengths)
    ]


def _counted_step_flops(module: MLMModule, batch: dict[str, Any]) -> int:
    """FLOPs torch counts in one forward and backward of the module's training step."""
    counter = FlopCounterMode(display=False)
    # The math attention kernel is made of matmuls the counter sees (it has no formula for CPU flash attention).
    with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH), counter:
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        module.training_step(batch, 0).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("model_type", "full_logits"),
    [("bert", False), ("bert", True), ("distilbert", False)],  # DistilBERT: own config names, no position-wise head
)
def test_analytic_flops_match_torch_flop_counter(model_type: str, full_logits: bool) -> None:
    torch.manual_seed(0)
    module = MLMModule(
        vocab_size=VOCAB,
        model_type=model_type,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
        full_logits=full_logits,
        pad_vocab_multiple=64,
    )
    batch = _collator()(_examples([48] * 6))  # full (packed) rows: every position is a real token
    assert "attention_mask" not in batch
    counted = _counted_step_flops(module, batch)
    analytic = step_flops(module, batch)
    shape = flops.EncoderShape.from_config(module.model.config)
    masked = batch["masked_positions"].numel()
    if full_logits:
        assert analytic == pytest.approx(counted, rel=0.03)
    else:
        # Model FLOPs count the masked rows; the CPU head also runs on the padding up to a multiple of
        # HEAD_ROWS_MULTIPLE, which the counter sees and MFU does not credit.
        from mlm_lightning.model.head import HEAD_ROWS_MULTIPLE

        padded = -(-masked // HEAD_ROWS_MULTIPLE) * HEAD_ROWS_MULTIPLE
        assert analytic == flops.training_flops(shape, 6 * 48, 6 * 48 * 48, masked)
        assert flops.training_flops(shape, 6 * 48, 6 * 48 * 48, padded) == pytest.approx(counted, rel=0.03)
    if model_type == "bert" and not full_logits:  # the masked-only head: a small share of the positions
        everywhere = flops.training_flops(shape, 6 * 48, 6 * 48 * 48, 6 * 48)
        assert analytic < 0.8 * everywhere


def test_flops_count_real_lengths_not_padding() -> None:
    shape = flops.EncoderShape(64, 2, 256, 4, 1024, 64)
    batch = _collator()(_examples([10, 40, 25]))
    assert batch["input_ids"].shape == (3, 40)
    tokens, pairs = flops.batch_token_counts(batch)
    assert (tokens, pairs) == (75, 10**2 + 40**2 + 25**2)
    # The same from the attention mask, for batches from other collators.
    other = {k: v for k, v in batch.items() if k not in ("num_tokens", "num_token_pairs")}
    assert flops.batch_token_counts(other) == (tokens, pairs)
    assert flops.forward_flops(shape, tokens, pairs, 0) == sum(
        flops.forward_flops(shape, n, n * n, 0) for n in (10, 40, 25)
    )


def test_encoder_shape_from_configs() -> None:
    from transformers import AlbertConfig, BertConfig, DistilBertConfig

    assert flops.EncoderShape.from_config(BertConfig()) == flops.EncoderShape(768, 12, 3072, 12, 30522, 768)
    distil = DistilBertConfig(dim=384, n_layers=3, hidden_dim=1536, n_heads=6, vocab_size=100)
    assert flops.EncoderShape.from_config(distil) == flops.EncoderShape(384, 3, 1536, 6, 100, 384)
    albert = flops.EncoderShape.from_config(AlbertConfig(vocab_size=100))
    assert (albert.hidden_size, albert.embedding_size) == (4096, 128)


@pytest.mark.parametrize(
    ("name", "dtype", "tf32", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, False, 989.4e12),
        ("NVIDIA H100 PCIe", torch.bfloat16, False, 756e12),
        ("NVIDIA H100 NVL", torch.bfloat16, False, 835.5e12),
        ("NVIDIA H200", torch.bfloat16, False, 989.4e12),
        ("NVIDIA H200 NVL", torch.float16, False, 835.5e12),
        ("NVIDIA A100-SXM4-80GB", torch.float32, True, 156e12),
        ("NVIDIA A100 80GB PCIe", torch.float32, False, 19.5e12),
        ("NVIDIA A10G", torch.bfloat16, False, 125e12),
        ("NVIDIA L4", torch.bfloat16, False, 121e12),
        ("NVIDIA L40S", torch.bfloat16, False, 362e12),
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, False, 165.2e12),
        ("Tesla V100-SXM2-16GB", torch.float16, False, 125e12),
        ("Tesla V100-SXM2-16GB", torch.bfloat16, False, None),  # no bf16 tensor cores: no honest peak
        ("Some Future GPU", torch.bfloat16, False, None),
    ],
)
def test_gpu_peak_table(name: str, dtype: torch.dtype, tf32: bool, peak: float | None) -> None:
    assert flops.gpu_peak_flops(name, dtype, tf32=tf32) == peak


def test_compute_dtype_of_precision_settings() -> None:
    assert flops.compute_dtype("bf16-mixed") is torch.bfloat16
    assert flops.compute_dtype("bf16-true") is torch.bfloat16
    assert flops.compute_dtype("16-mixed") is torch.float16
    assert flops.compute_dtype("32-true") is torch.float32
    assert flops.compute_dtype("64-true") is torch.float64


@pytest.fixture
def no_given_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU peak measured, not given: tests of the probe and its cache (the suite gives one to every test)."""
    monkeypatch.delenv(flops.CPU_PEAK_ENV, raising=False)


@pytest.mark.usefixtures("no_given_peak")
def test_cpu_peak_is_measured_once_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.dtype] = []
    monkeypatch.setattr(flops, "probe_cpu_flops", lambda dtype: calls.append(dtype) or 1.5e11)
    monkeypatch.setattr(flops, "system_busy_seconds", lambda: 100.0)  # an idle machine
    monkeypatch.setattr(flops, "_memo", {})
    assert flops.cpu_peak_flops(torch.bfloat16) == 1.5e11
    assert flops.cpu_peak_flops(torch.bfloat16) == 1.5e11
    cached = json.loads(flops.peak_cache_path().read_text())
    assert cached == {flops.cpu_peak_key(torch.bfloat16): 1.5e11}
    assert str(torch.get_num_threads()) in flops.cpu_peak_key(torch.float32)
    assert flops.cpu_peak_key(torch.float32) != flops.cpu_peak_key(torch.bfloat16)
    # A new process (empty memo) reads the file instead of probing.
    monkeypatch.setattr(flops, "_memo", {})
    assert flops.cpu_peak_flops(torch.bfloat16) == 1.5e11 and calls == [torch.bfloat16]
    # A damaged cache is measured again and rewritten, never trusted.
    flops.peak_cache_path().write_text('{"' + flops.cpu_peak_key(torch.bfloat16) + '": -1, "x": "y"')
    monkeypatch.setattr(flops, "_memo", {})
    assert flops.cpu_peak_flops(torch.bfloat16) == 1.5e11 and len(calls) == 2
    assert json.loads(flops.peak_cache_path().read_text()) == cached


@pytest.mark.usefixtures("no_given_peak")
def test_cpu_peak_measured_on_a_busy_machine_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Measured while other jobs ran, the cached bf16 "peak" of this project's machine was 87 GFLOP/s against 420
    # idle: every later run logged an MFU almost 5 times too high.
    busy = iter([100.0, 101.0])  # other processes: one CPU second during the (instant) probe
    monkeypatch.setattr(flops, "system_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(flops, "probe_cpu_flops", lambda dtype: 0.87e11)
    monkeypatch.setattr(flops, "_memo", {})
    assert flops.cpu_peak_flops(torch.bfloat16) is None
    assert flops.peak_flops(torch.device("cpu"), torch.bfloat16) is None  # memoised for the run: no MFU logged
    assert not flops.peak_cache_path().exists()
    # The next run, on an idle machine, measures it again and keeps it.
    monkeypatch.setattr(flops, "system_busy_seconds", lambda: 100.0)
    monkeypatch.setattr(flops, "probe_cpu_flops", lambda dtype: 4.2e11)
    monkeypatch.setattr(flops, "_memo", {})
    assert flops.cpu_peak_flops(torch.bfloat16) == 4.2e11
    assert json.loads(flops.peak_cache_path().read_text()) == {flops.cpu_peak_key(torch.bfloat16): 4.2e11}


@pytest.mark.usefixtures("no_given_peak")
def test_peaks_cached_before_the_busy_check_are_measured_again(monkeypatch: pytest.MonkeyPatch) -> None:
    old_key = flops.cpu_peak_key(torch.float32).removeprefix("v2|")
    flops.peak_cache_path().parent.mkdir(parents=True, exist_ok=True)
    flops.peak_cache_path().write_text(json.dumps({old_key: 0.6e11}))
    monkeypatch.setattr(flops, "system_busy_seconds", lambda: 100.0)
    monkeypatch.setattr(flops, "probe_cpu_flops", lambda dtype: 1.7e11)
    monkeypatch.setattr(flops, "_memo", {})
    assert flops.cpu_peak_flops(torch.float32) == 1.7e11


def test_system_busy_seconds_reads_this_machine() -> None:
    first = flops.system_busy_seconds()
    if first is None:
        pytest.skip("no /proc/stat")
    end = time.process_time() + 0.05
    while time.process_time() < end:  # this process: busy for 50 ms
        pass
    assert flops.system_busy_seconds() >= first + 0.03


def test_cpu_probe_measures_a_plausible_rate() -> None:
    rate = flops.probe_cpu_flops(torch.float32, size=256, seconds=0.05)
    # No lower bound but 0: a loaded machine measured 6.6e7 FLOP/s (the rate is wall-clock time, not this CPU's).
    assert 0 < rate < 1e14


class _Capture(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append(dict(metrics))


class _Recorder(L.Callback):
    """Slows each step down (so the clock's resolution and hook overhead do not matter) and notes what it saw."""

    def __init__(self) -> None:
        self.ends: list[tuple[float, int, int]] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        time.sleep(0.05)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ends.append((time.perf_counter(), batch["num_tokens"], step_flops(module, batch)))


def test_logged_tokens_per_sec_and_mfu(monkeypatch: pytest.MonkeyPatch) -> None:
    peak = 2.0e9
    monkeypatch.setattr("mlm_lightning.callbacks.throughput.peak_flops", lambda device, dtype, cache_dir=None: peak)
    torch.manual_seed(0)
    module = MLMModule(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    rng = np.random.default_rng(1)
    examples = _examples([int(n) for n in rng.integers(8, 48, 48)])  # uneven rows: padding must not count
    loader = torch.utils.data.DataLoader(examples, batch_size=4, collate_fn=_collator())
    logger, recorder = _Capture(), _Recorder()
    trainer = L.Trainer(
        max_steps=12,
        log_every_n_steps=3,
        logger=logger,
        callbacks=[recorder, Throughput()],  # the CLI adds Throughput to every run
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    logged = [(r["train/tokens_per_sec"], r["train/mfu"]) for r in logger.rows if "train/tokens_per_sec" in r]
    # Intervals: from the end of batch 0 to the end of batch 2, then 2 -> 5, 5 -> 8, 8 -> 11.
    bounds = [0, 2, 5, 8, 11]
    assert len(logged) == len(bounds) - 1
    for (rate, mfu), start, end in zip(logged, bounds, bounds[1:]):
        span = recorder.ends[start + 1 : end + 1]
        tokens, step_flops = sum(t for _, t, _ in span), sum(f for _, _, f in span)
        wall = recorder.ends[end][0] - recorder.ends[start][0]
        assert rate == pytest.approx(tokens / wall, rel=0.05)
        # MFU over the same interval: the model's FLOP/s divided by the peak (exact: same clock as tokens/s).
        assert mfu == pytest.approx(rate * step_flops / tokens / peak, rel=1e-4)


def test_the_cpu_probe_leaves_the_global_random_state_alone() -> None:
    # The first run on a machine probes, later ones read the cache: with the same seed both must train alike.
    from mlm_lightning.training.flops import probe_cpu_flops

    before = torch.get_rng_state()
    probe_cpu_flops(torch.float32, size=64, seconds=0.0)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_given_cpu_peak_is_used_without_probing_or_caching(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests (and a user on a shared machine) set the peak: MFU is then logged whatever the load.
    monkeypatch.setattr(flops, "probe_cpu_flops", lambda dtype: pytest.fail("probed"))
    monkeypatch.setattr(flops, "_memo", {})
    monkeypatch.setenv(flops.CPU_PEAK_ENV, "4.2e11")
    assert flops.peak_flops(torch.device("cpu"), torch.bfloat16) == 4.2e11
    assert not flops.peak_cache_path().exists()
    for bad in ("fast", "0", "-1e11", "inf", "nan"):
        monkeypatch.setenv(flops.CPU_PEAK_ENV, bad)
        with pytest.raises(MLMError, match=f"MLM_LIGHTNING_CPU_PEAK_FLOPS='{bad}': must be"):
            flops.peak_flops(torch.device("cpu"), torch.float32)


class _CacheDirData(L.LightningDataModule):
    def __init__(self, cache_dir: Path) -> None:
        super().__init__()
        self.cache_dir = cache_dir

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_examples([12] * 8), batch_size=4, collate_fn=_collator())


@pytest.mark.usefixtures("no_given_peak")
def test_the_cpu_peak_is_cached_in_the_runs_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # data.cache_dir moves every cache of a run: the tokenized corpora and the CPU peak alike.
    monkeypatch.setattr(flops, "probe_cpu_flops", lambda dtype: 1.5e11)
    monkeypatch.setattr(flops, "system_busy_seconds", lambda: 100.0)  # an idle machine
    monkeypatch.setattr(flops, "_memo", {})
    module = MLMModule(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    throughput = Throughput()
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        callbacks=[throughput],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=_CacheDirData(tmp_path / "run_cache"))
    assert throughput.peak == 1.5e11
    assert json.loads((tmp_path / "run_cache" / flops.PEAK_CACHE_FILE).read_text()) == {
        flops.cpu_peak_key(flops.compute_dtype(trainer.precision)): 1.5e11
    }
    assert not flops.peak_cache_path().exists()  # not in $MLM_LIGHTNING_CACHE


@pytest.mark.usefixtures("no_given_peak")
def test_a_busy_probe_is_said_once_then_only_in_the_debug_log(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("mlm_lightning.training.flops")
    level = logger.level
    logger.setLevel(logging.DEBUG)  # setLevel, not the attribute: it clears the logger's isEnabledFor cache
    logger.addHandler(handler)
    try:
        for _run in range(3):  # three runs on a machine that stays busy
            clock = iter([100.0, 101.0])
            monkeypatch.setattr(flops, "system_busy_seconds", lambda clock=clock: next(clock))
            monkeypatch.setattr(flops, "probe_cpu_flops", lambda dtype: 0.87e11)
            monkeypatch.setattr(flops, "_memo", {})
            assert flops.cpu_peak_flops(torch.bfloat16) is None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    shown = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    assert len(shown) == 1 and shown[0].startswith("no train/mfu this run") and "said only this once" in shown[0]
    debug = [r.getMessage() for r in records if r.levelno < logging.INFO]
    assert sum(m.startswith("measuring this CPU") for m in debug) == 3
    assert sum(m.startswith("no train/mfu") for m in debug) == 2


def test_the_cpu_probe_stays_short_where_the_dtype_is_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    # bf16 on an AVX2-only CPU: one 2048 x 2048 product took 265 s, and a test run sat 13 minutes in the probe.
    # A simulated clock: each product costs n^3 x 30 ns (2048: about 260 s; 256: 0.5 s; 128: 0.06 s).
    now = [0.0]
    sizes: list[int] = []

    def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sizes.append(a.shape[0])
        now[0] += a.shape[0] ** 3 * 30e-9
        return a

    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)
    monkeypatch.setattr(flops, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    rate = flops.probe_cpu_flops(torch.bfloat16)
    assert max(sizes) == 128 and now[0] < 2  # grows only while the next size's product takes under half a second
    assert rate == pytest.approx(2 / 30e-9)


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_a_family_without_a_countable_shape_trains_with_tokens_per_second_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FNet's config names no attention heads: the run says there is no MFU and trains (it raised on batch two)."""
    from mlm_lightning.__main__ import main

    args = ["fit", "--config", "configs/tiny.yaml", "--model.model_type", "fnet", "--trainer.max_steps", "3"]
    args += [
        "--trainer.val_check_interval",
        "3",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.log_every_n_steps",
        "1",
    ]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "no train/mfu this run: FNetConfig" in caplog.text
