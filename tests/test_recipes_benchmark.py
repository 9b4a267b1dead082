"""benchmarks/recipes.py (issue 23 Part B): each recipe's flags are real settings, scaled with the run; the table's
paired differences against a hand computation."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _bench():  # noqa: ANN202 - a module loaded from a file
    spec = importlib.util.spec_from_file_location("recipes_benchmark", ROOT / "benchmarks" / "recipes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_every_recipe_is_settings_of_base_yaml_scaled_to_the_run() -> None:
    from mlm_lightning.cli.config import parse_config

    table = _bench().recipes(60)  # a fifth of base.yaml's 300 steps
    assert table["mask30to15"][-1] == "40" and table["seqwarmup"][-1] == "20"
    assert table["ema"][-1] == "0.95"  # the window keeps its share of the run: 1 - 0.01 / 0.2
    for name, flags in table.items():  # a flag the command line does not know would fail here, not after an hour
        config = parse_config(["--config", str(ROOT / "configs" / "base.yaml"), *flags])
        assert config is not None, name
    config = parse_config(["--config", str(ROOT / "configs" / "base.yaml"), *table["seqwarmup"]])
    assert config.data.sequence_warmup.start_length == 32


def test_the_table_pairs_each_recipe_with_berts_run_of_the_same_seed(capsys: pytest.CaptureFixture) -> None:
    bench = _bench()
    seeds = [0, 1, 2]
    exports = {(n, s): Path(f"/runs/{n}/seed{s}") for n in ("bert", "wsd") for s in seeds}
    word = {"bert": [100.0, 110.0, 90.0], "wsd": [95.0, 104.0, 88.0]}  # differences -5, -6, -2
    acc = {"bert": [0.50, 0.60, 0.55], "wsd": [0.52, 0.61, 0.55]}  # +2, +1, 0 points
    by_model = {(bench.BASE_MODEL, "domain"): {"perplexity": 500.0, "word_perplexity": 900.0}}
    for n in word:
        for i, s in enumerate(seeds):
            by_model[str(exports[n, s]), "domain"] = {"perplexity": word[n][i] / 2, "word_perplexity": word[n][i]}
    probes = {s: {str(exports[n, s]): {"accuracy": acc[n][i], "macro_f1": acc[n][i]} for n in acc} for i, s in
              enumerate(seeds)}  # fmt: skip
    args = argparse.Namespace(steps=60, seeds=seeds, passages_per_play=24)
    bench.print_table(args, ["bert", "wsd"], exports, by_model, probes)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    # Hand computation: differences -5, -6, -2: mean -4.33, sd 2.0817, t(0.975, 2) = 4.3027, half 5.171.
    assert cells[0] == "wsd" and cells[2] == "95.67 ± 8.02" and cells[-2] == "-4.33 [-9.50, +0.84]"
    # Accuracy in points: +2, +1, 0: mean +1.00, sd 1, half 2.4842.
    assert cells[-1] == "+1.00 [-1.48, +3.48]"
    assert [c.strip() for c in rows[-2].strip("|").split("|")][-1] == "(reference)"
