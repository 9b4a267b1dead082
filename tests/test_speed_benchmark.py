"""benchmarks/speed.py: the pretrained-encoder workload's smoke mode runs both sides and prints the comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_speed_benchmark_pretrained_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--workload", "pretrained", "--smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "workload pretrained" in out and "project 32-true vs HF recipe 32-true (same precision)" in out
    if "bf16" in out.split("CPU matmul peak:")[1].splitlines()[0]:  # a CPU with bf16: both comparisons, by default
        assert "project bf16-mixed vs HF recipe bf16-mixed (same precision)" in out
        assert "project bf16-mixed vs HF recipe 32-true (the recipe's default)" in out
    # MFU needs the CPU's peak, which is not measured while other processes keep the CPU busy.
    busy = "not measured (CPU busy)" in out
    for label in ("real tokens/s", "MFU (%)", "val perplexity"):
        line = next(x for x in out.splitlines() if x.startswith(label))
        project, peer, ratio = (float(v) for v in line.split()[-3:])
        if label == "MFU (%)" and busy:
            assert "nan" in line, line
            continue
        assert project > 0 and peer > 0 and ratio > 0, line
