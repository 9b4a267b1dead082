"""benchmarks/families.py: its smoke mode runs both head paths per family and prints medians and their ratio."""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_families_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("families_benchmark", ROOT / "benchmarks" / "families.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "families.json"
    assert bench.main(["--smoke", "--families", "bert", "distilbert", "--repeats", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    printed = capsys.readouterr().out.strip().splitlines()
    assert [r["family"] for r in results] == ["bert", "distilbert"] and len(printed) == 2 + len(results)
    for row, line in zip(results, printed[2:]):
        assert len(row["full_runs"]) == len(row["masked_runs"]) == 3 and row["head"] == "masked-only"
        full, masked = statistics.median(row["full_runs"]), statistics.median(row["masked_runs"])
        assert (row["full_tokens_per_sec"], row["masked_tokens_per_sec"]) == (full, masked)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["family"] and cells[1] == "masked-only"
        assert cells[3:] == [f"{full:,.0f}", f"{masked:,.0f}", f"{masked / full:.2f}"]
        assert re.fullmatch(r"\d+\.\d M", cells[2])
