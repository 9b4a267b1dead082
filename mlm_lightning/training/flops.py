"""Model FLOPs of a training step and the device's peak FLOP/s: model FLOPs utilisation (MFU).

MFU = (model FLOPs of the steps) / (wall time) / (the device's peak FLOP/s at the compute precision). Model FLOPs
count the matrix products the model needs, at the real (non-pad) lengths of the rows, so padding and recomputation
lower MFU instead of inflating it:

* per encoder layer and real token: the Q, K, V and output projections (``8 h^2``) and the feed-forward
  (``4 h f``); per row of ``L`` real tokens, the attention scores and their weighted sum (``4 h L^2``);
* the MLM head (transform ``2 h e`` plus vocabulary projection ``2 e V``) only at the positions it is applied to
  (the masked ones on the masked-only path);
* embedding lookups, normalisation, activations and the loss are negligible; the backward pass costs twice
  the forward (gradients for inputs and for weights), so a training step is three forward passes.

Peaks: a table of GPUs (dense, tensor-core figures from the vendors' datasheets), and on a CPU a short matmul
probe at the compute precision, measured once per CPU model, thread count, dtype and torch version and cached in
``<cache dir>/peak_flops.json`` (the run's ``data.cache_dir``, else ``$MLM_LIGHTNING_CACHE``). A probe during which
other processes kept the CPU busy measures a share of the machine, not its peak (MFU would read several times too
high, for every later run): it is neither used nor cached, and that run logs no MFU. ``$MLM_LIGHTNING_CPU_PEAK_FLOPS``
gives the peak instead (a datasheet figure, or a fixed one for tests): nothing is measured or cached.

Lightning's ``get_available_flops`` table is not used: it does not match the name torch reports for an H200
("NVIDIA H200"), lists the H200's figures with sparsity (twice the dense rate), and gives the RTX 4090 and RTX
A6000 their non-tensor rate for bf16/fp16 (half the dense tensor rate), so MFU would be missing or off by 2x.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlm_lightning.families import family

log = logging.getLogger(__name__)

# Quantity -> the setting whose config names (``Family.config_names``: DistilBERT's ``dim``, BART's ``d_model``) it is
# read under, first found wins. The family's own names only: a config also keeps unknown keyword arguments as
# attributes (``AutoConfig.for_model("distilbert", intermediate_size=...)`` has one its model never reads).
_SETTINGS = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "intermediate_size": "intermediate_size",
    "num_heads": "num_attention_heads",
}


@dataclass(frozen=True)
class EncoderShape:
    """The sizes that determine an encoder MLM's FLOPs.

    Args:
        hidden_size: Width ``h`` of the encoder.
        num_layers: Encoder layers.
        intermediate_size: Feed-forward width ``f``.
        num_heads: Attention heads (do not change the FLOPs; kept for the record).
        vocab_size: Rows of the output projection ``V`` (the padded vocabulary, as computed).
        embedding_size: Width ``e`` of the embeddings and of the MLM head's output side (``h`` unless factorised).
    """

    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    vocab_size: int
    embedding_size: int

    @classmethod
    def from_config(cls, config: Any) -> EncoderShape:
        """Reads the sizes from a ``transformers`` config under its family's names (:mod:`mlm_lightning.families`)."""
        config_names = family(getattr(config, "model_type", None)).config_names
        values: dict[str, int] = {}
        for field in (*_SETTINGS, "vocab_size", "embedding_size"):
            # embedding_size: ALBERT/ELECTRA factorised embeddings; otherwise the hidden size.
            names = config_names[_SETTINGS[field]] if field in _SETTINGS else (field,)
            found = next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), None)
            if found is None and field == "embedding_size":
                found = values["hidden_size"]
            if found is None:
                raise ValueError(f"{type(config).__name__} has none of {names}: cannot count its FLOPs")
            values[field] = int(found)
        return cls(**values)


def forward_flops(shape: EncoderShape, num_tokens: int, num_token_pairs: int, head_positions: int) -> int:
    """Model FLOPs of one forward pass.

    Args:
        shape: The model's sizes.
        num_tokens: Real (non-pad) tokens of the batch, ``sum(L_i)``.
        num_token_pairs: Query-key pairs attention scores, ``sum(L_i^2)`` over the rows.
        head_positions: Positions the MLM head is applied to (masked tokens, or every token for full logits).
    """
    h, f, e = shape.hidden_size, shape.intermediate_size, shape.embedding_size
    per_token = shape.num_layers * (8 * h * h + 4 * h * f) + (2 * e * h if e != h else 0)
    attention = shape.num_layers * 4 * h * num_token_pairs
    head = head_positions * (2 * h * e + 2 * e * shape.vocab_size)
    return per_token * num_tokens + attention + head


def training_flops(shape: EncoderShape, num_tokens: int, num_token_pairs: int, head_positions: int) -> int:
    """Model FLOPs of one forward and backward pass (three forward passes); arguments as :func:`forward_flops`."""
    return 3 * forward_flops(shape, num_tokens, num_token_pairs, head_positions)


def batch_token_counts(batch: Mapping[str, Any]) -> tuple[int, int]:
    """``(real tokens, sum of squared row lengths)`` of a collated batch.

    ``MLMCollator`` puts both in the batch as plain integers (computed on the CPU in the dataloader, so reading
    them needs no host-device synchronisation). Batches from other collators are counted from their attention
    mask (or their shape when there is none), which reads the mask back from the device.
    """
    if "num_tokens" in batch and "num_token_pairs" in batch:
        return int(batch["num_tokens"]), int(batch["num_token_pairs"])
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    lengths = mask.sum(1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
    return int(sum(lengths)), int(sum(n * n for n in lengths))


# ------------------------------------------------------------------------------------------------- peaks
# Dense peak FLOP/s (no sparsity) per precision, from the vendors' datasheets and architecture whitepapers;
# bf16/fp16 with fp32 accumulation (what autocast's matmuls use). First matching pattern (lower-case torch device
# name) wins, so the specific names come before the general ones.
_GPU_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    # Hopper: H100/H200 datasheets (the tables give tf32/bf16/fp16 with sparsity: halved here).
    (r"h200.*nvl", {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12}),
    (r"h200|gh200", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}),
    (r"h100.*nvl", {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12}),
    (r"h100.*pcie", {"fp32": 51.2e12, "tf32": 378e12, "bf16": 756e12, "fp16": 756e12}),
    (r"h100|h800", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}),  # SXM ("80GB HBM3")
    # Ampere: A100 datasheet (SXM and PCIe alike), A10 datasheet; A10G is AWS's GA102 part without a datasheet
    # of its own: the A10's figures.
    (r"a100", {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12}),
    (r"a10g?\b", {"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12, "fp16": 125e12}),
    (r"rtx a6000", {"fp32": 38.7e12, "tf32": 77.4e12, "bf16": 154.8e12, "fp16": 154.8e12}),
    (r"rtx 3090(?! ti)", {"fp32": 35.6e12, "tf32": 35.6e12, "bf16": 71e12, "fp16": 71e12}),
    # Ada: L4, L40, L40S datasheets; RTX 4090 from the Ada architecture whitepaper.
    (r"l40s", {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362e12, "fp16": 362e12}),
    (r"l40\b", {"fp32": 90.5e12, "tf32": 90.5e12, "bf16": 181e12, "fp16": 181e12}),
    (r"\bl4\b", {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12, "fp16": 121e12}),
    (r"rtx 4090", {"fp32": 82.6e12, "tf32": 82.6e12, "bf16": 165.2e12, "fp16": 165.2e12}),
    # Volta and Turing: no bf16 or tf32 tensor cores.
    (r"v100.*pcie", {"fp32": 14e12, "fp16": 112e12}),
    (r"v100", {"fp32": 15.7e12, "fp16": 125e12}),
    (r"\bt4\b", {"fp32": 8.1e12, "fp16": 65e12}),
)

_DTYPE_KEYS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
PEAK_CACHE_FILE = "peak_flops.json"
CPU_PEAK_ENV = "MLM_LIGHTNING_CPU_PEAK_FLOPS"  # a given CPU peak (FLOP/s), used instead of the probe and its cache
# Other processes may use this many cores on average during the probe before its figure is not this CPU's peak.
PROBE_MAX_OTHER_CORES = 0.25
_memo: dict[str, float | None] = {}


def compute_dtype(precision: str | int | None) -> torch.dtype:
    """The matmul dtype of a Lightning precision setting (``"bf16-mixed"`` -> bfloat16, ``"32-true"`` -> float32)."""
    text = str(precision)
    if "bf16" in text:
        return torch.bfloat16
    if text.startswith("16") or "fp16" in text or "half" in text:
        return torch.float16
    if text.startswith("64"):
        return torch.float64
    return torch.float32


def gpu_peak_flops(device_name: str, dtype: torch.dtype, tf32: bool = False) -> float | None:
    """Dense peak FLOP/s of a GPU (by its torch device name) at ``dtype``; ``None`` if not in the table.

    Args:
        device_name: ``torch.cuda.get_device_name()``, e.g. ``"NVIDIA H100 80GB HBM3"``.
        dtype: Compute dtype of the matmuls.
        tf32: float32 matmuls run as TF32 (``torch.get_float32_matmul_precision() != "highest"``).
    """
    key = _DTYPE_KEYS.get(dtype)
    if key == "fp32" and tf32:
        key = "tf32"
    name = device_name.lower()
    for pattern, peaks in _GPU_PEAKS:
        if re.search(pattern, name):
            return peaks.get(key) if key else None
    return None


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_cpu_flops(dtype: torch.dtype, size: int = 2048, seconds: float = 0.5) -> float:
    """Measured matmul FLOP/s of this CPU at ``dtype``: the fastest of repeated products of up to ``size`` x ``size``.

    The product grows from 128 to ``size`` while the next size's would take under ``seconds``: a CPU that emulates
    the dtype (bf16 on an AVX2-only CPU: minutes for one 2048 x 2048 product; benchmarks/README.md) is probed in a
    few seconds at a smaller size.
    """
    # Its own generator: the global one seeds dropout, and a run that probes must train like one that reads the cache.
    gen = torch.Generator().manual_seed(0)
    n = min(128, size)
    while True:
        a = torch.randn(n, n, generator=gen).to(dtype)
        b = torch.randn(n, n, generator=gen).to(dtype)
        a @ b  # first call: allocation, thread pool, kernel selection
        start = time.perf_counter()
        a @ b
        took = time.perf_counter() - start
        if n >= size or took * 8 > max(seconds, 0.05):  # the next size would take 8 times as long
            break
        n = min(2 * n, size)
    best, repeats, end = took, 1, time.perf_counter() + seconds
    while repeats < 3 or time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
        repeats += 1
    return 2 * n**3 / best


def system_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have been busy since boot (``/proc/stat``); ``None`` elsewhere."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle + iowait; the rest (user nice system irq softirq steal) is busy
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def probe_cpu_peak(dtype: torch.dtype, seconds: float | None = None) -> float | None:
    """:func:`probe_cpu_flops`, or ``None`` when other processes used more than a quarter core meanwhile."""
    busy, own, wall = system_busy_seconds(), time.process_time(), time.perf_counter()
    rate = probe_cpu_flops(dtype) if seconds is None else probe_cpu_flops(dtype, seconds=seconds)
    after = system_busy_seconds()
    if busy is None or after is None:  # not Linux: no way to tell, take the figure
        return rate
    others = (after - busy) - (time.process_time() - own)
    if others / (time.perf_counter() - wall) > PROBE_MAX_OTHER_CORES:
        # Said once per CPU and dtype (a busy machine stays busy: every run would repeat it), then in the debug log.
        said = _said_busy(cpu_peak_key(dtype))
        (log.debug if said else log.info)(
            "no train/mfu this run: other processes were using the CPU while its %s matmul peak was measured "
            "(it is measured again at the start of each run%s)",
            dtype,
            "" if said else "; said only this once",
        )
        return None
    return rate


def _said_busy(key: str) -> bool:
    """Whether a busy probe of ``key`` was already reported; marks it as reported (``peak_flops.busy``)."""
    path = peak_cache_path().with_suffix(".busy")
    try:
        seen = path.read_text().splitlines()
    except OSError:
        seen = []
    if key in seen:
        return True
    try:  # best effort: a read-only cache only means the line is said again
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(key + "\n")
    except OSError:
        pass
    return False


def cpu_peak_key(dtype: torch.dtype) -> str:
    """Cache key of a CPU peak: what changes it (processor, threads, dtype, torch version).

    ``v2``: peaks cached before the busy-machine check may be a loaded machine's share; they are measured again.
    """
    return (
        f"v2|{cpu_model()}|threads={torch.get_num_threads()}|{str(dtype).removeprefix('torch.')}"
        f"|torch={torch.__version__}"
    )


def peak_cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where measured CPU peaks are kept: in ``cache_dir`` (a run's ``data.cache_dir``), else the default cache."""
    from mlm_lightning.io.sources import default_cache_dir

    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / PEAK_CACHE_FILE


def given_cpu_peak() -> float | None:
    """The CPU peak set in ``$MLM_LIGHTNING_CPU_PEAK_FLOPS`` (FLOP/s, e.g. ``4.2e11``), or ``None`` when unset.

    Raises:
        MLMError: It is set but not a finite number above 0.
    """
    from mlm_lightning.errors import MLMError

    text = os.environ.get(CPU_PEAK_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise MLMError(
            f"${CPU_PEAK_ENV}={text!r}: must be this CPU's matmul peak in FLOP/s, a number > 0 (e.g. 4.2e11)"
        )
    return value


def _read_peak_cache(path: Path) -> dict[str, float]:
    # Our own cache, so anything unreadable is measured again rather than reported (and rewritten whole).
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and math.isfinite(v) and v > 0}


def cpu_peak_flops(dtype: torch.dtype, cache_dir: str | os.PathLike[str] | None = None) -> float | None:
    """This CPU's matmul peak at ``dtype``: measured once (about a second) and cached on disk and in memory.

    ``$MLM_LIGHTNING_CPU_PEAK_FLOPS``, when set, is the peak instead (for every dtype). ``None`` when the
    measurement was disturbed by other processes (nothing cached: the next run measures again).

    Args:
        dtype: The compute dtype of the matmuls.
        cache_dir: The cache folder of the run (``data.cache_dir``); ``None``: the default cache.
    """
    given = given_cpu_peak()
    if given is not None:
        return given
    path = peak_cache_path(cache_dir)
    key = cpu_peak_key(dtype)
    memo_key = f"{path}|{key}"
    if memo_key in _memo:
        return _memo[memo_key]
    cached = _read_peak_cache(path)
    if key not in cached:
        from mlm_lightning.io.atomic import atomic_file

        # The debug log only: a second of the start-up, nothing to act on.
        log.debug("measuring this CPU's %s matmul peak for MFU (once; cached in %s)", dtype, path)
        rate = probe_cpu_peak(dtype)
        if rate is None:
            _memo[memo_key] = None
            return None
        cached[key] = rate
        try:
            with atomic_file(path) as tmp:
                tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        except OSError as err:  # a read-only cache only costs the probe again next time
            log.warning("could not cache the CPU peak in %s: %s", path, err)
    _memo[memo_key] = cached[key]
    return cached[key]


def peak_flops(
    device: torch.device, dtype: torch.dtype, cache_dir: str | os.PathLike[str] | None = None
) -> float | None:
    """Peak FLOP/s of one ``device`` at ``dtype``: the GPU table, a CPU's (measured and cached in ``cache_dir``, or
    given), or ``None`` if unknown."""
    if device.type == "cuda":
        return gpu_peak_flops(
            torch.cuda.get_device_name(device), dtype, tf32=torch.get_float32_matmul_precision() != "highest"
        )
    if device.type == "cpu" and dtype in _DTYPE_KEYS:
        return cpu_peak_flops(dtype, cache_dir)
    return None
