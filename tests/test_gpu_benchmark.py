"""benchmarks/gpu.py: its CPU smoke mode runs, with only what a bare GPU machine has installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlm_lightning.training.flops import CPU_PEAK_ENV
from tests.conftest import FIXED_CPU_PEAK

ROOT = Path(__file__).resolve().parents[1]

# The GPU machine has torch, lightning, transformers and torchmetrics but not these: importing one fails there.
_BLOCK_IMPORTS = """
import runpy, sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("datasets", "jsonargparse", "pyarrow"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: absent on the GPU machine)")
sys.meta_path.insert(0, _Missing())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow  # a benchmark in a subprocess (28 s idle): CI runs it, make test does not
def test_gpu_benchmark_smoke_runs_without_datasets_or_jsonargparse(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": ""}  # the script finds the package itself, as on the GPU machine
    env[CPU_PEAK_ENV] = FIXED_CPU_PEAK  # MFU whatever the load (the CPU probe refuses a busy machine)
    cmd = [sys.executable, "-c", _BLOCK_IMPORTS, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device: CPU" in proc.stdout and "torch " in proc.stdout and "MFU" in proc.stdout
    result = json.loads(out.read_text())
    assert [r["seq_len"] for r in result["runs"]] == [32, 64]
    for run in result["runs"]:
        for side in ("project", "hf"):
            assert run[side]["tokens_per_sec"] > 0 and 0 < run[side]["mfu"] < 1
        # The masked-only head: fewer model FLOPs per token than the recipe's full-vocabulary head.
        assert run["project"]["model_flops_per_token"] < run["hf"]["model_flops_per_token"]
