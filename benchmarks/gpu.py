"""GPU training speed: a BERT-base-sized MLM, this project's training step against the Hugging Face recipe.

Both sides train a from-scratch encoder of BERT-base size (12 layers, hidden 768, 12 heads, intermediate 3072,
the bert-base-uncased vocabulary of 30,522 tokens) on the same synthetic packed rows (random token ids, full
rows, masked by the project's ``MLMCollator``: 15%, 80/10/10), bf16 autocast, gradient clipping at 1.0, the same
batch, sequence length and number of steps, at each sequence length (128 and 512 by default):

* **project**: ``MLMModule.training_step`` (the MLM head only at the masked positions) with ``compile`` on, so
  on a GPU encoder, gather, head and loss are one compiled graph (static shapes but the masked count), fused
  AdamW with the module's parameter groups, ``pad_vocab_multiple`` 64, SDPA attention without a mask (packed
  rows), no host-device synchronisation inside the step;
* **HF recipe**: what ``run_mlm.py`` with ``transformers.Trainer`` does by default: ``BertForMaskedLM(...,
  labels=...)`` (full-vocabulary logits and loss at every position, an all-ones attention mask as the tokenizer
  gives), AdamW (fused: the Trainer's default on torch >= 2.8), no compile.

Timing: the first step (compilation) is timed apart, then ``--warmup`` steps run untimed, then ``--steps``
steps between two ``torch.cuda.synchronize()``. Batches are prepared before timing and cycled (data loading is
not measured). Figures: real tokens/s, model TFLOP/s and MFU (model FLOPs from ``mlm_lightning.training.flops``, the
work each side actually does, over the GPU's dense bf16 peak), peak GPU memory (``max_memory_allocated``).

Only ``mlm_lightning.model.module``, ``.head``, ``.masking`` and ``.flops`` are imported (plus torch, lightning and
transformers), so the script runs where ``datasets`` and ``jsonargparse`` are not installed.

Usage::

    python benchmarks/gpu.py --json gpu.json          # on a GPU machine: both sequence lengths, both recipes
    python benchmarks/gpu.py --smoke                  # a tiny model on the CPU, in seconds (what the test runs)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mlm_lightning.data.masking import MLMCollator  # noqa: E402
from mlm_lightning.model.head import step_flops  # noqa: E402
from mlm_lightning.model.module import MLMModule  # noqa: E402
from mlm_lightning.training.flops import EncoderShape, peak_flops, training_flops  # noqa: E402

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}
VOCAB = 30522  # bert-base-uncased
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # bert-base-uncased's special token ids
TOKENS_PER_BATCH = 32768  # 256 x 128 and 64 x 512: large enough for full-width matmuls, fits both sides in 80 GB
LR, CLIP = 1e-4, 1.0


def make_batches(n: int, rows: int, seq_len: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` masked batches of full rows: ``[CLS]`` then random ids with a ``[SEP]`` every ~100 tokens."""
    rng = np.random.default_rng(seed)
    collate = MLMCollator(
        pad_token_id=PAD, mask_token_id=MASK, vocab_size=VOCAB, special_token_ids=[PAD, UNK, CLS, SEP, MASK], seed=seed
    )
    batches = []
    for b in range(n):
        ids = rng.integers(1000, VOCAB, size=(rows, seq_len))  # ordinary word pieces
        ids[:, 0] = CLS
        ids[rng.random((rows, seq_len)) < 0.01] = SEP  # document boundaries inside packed rows
        batches.append(collate([{"input_ids": row, "index": b * rows + i, "epoch": 0} for i, row in enumerate(ids)]))
    return batches


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def adamw(groups: Any, device: torch.device) -> torch.optim.Optimizer:
    # Fused on GPU (one kernel per step), foreach on CPU: as MLMModule.configure_optimizers chooses.
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=LR, **impl)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def project_step(arch: dict[str, int], device: torch.device, compile: bool) -> tuple[Callable, Any, Callable]:
    """The project's training step: ``MLMModule.training_step`` (masked-only head), fused AdamW, clipping."""
    module = MLMModule(
        vocab_size=VOCAB, max_position_embeddings=512, compile=compile, pad_vocab_multiple=64, **arch
    ).to(device)
    module.train()
    decay, no_decay = [], []
    for name, param in module.model.named_parameters():  # the module's groups: no decay on biases and norms
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    optimizer = adamw([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], device)
    params = decay + no_decay

    def step(batch: dict[str, Any]) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = module.training_step(batch, 0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def flops(batch: dict[str, Any]) -> int:
        return step_flops(module, batch)

    return step, module.model, flops


def hf_step(arch: dict[str, int], device: torch.device, compile: bool) -> tuple[Callable, Any, Callable]:
    """The Hugging Face recipe's step: ``BertForMaskedLM`` with ``labels=`` (full-vocabulary loss), AdamW."""
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=VOCAB, max_position_embeddings=512, **arch)).to(device)
    model.train()
    optimizer = adamw(model.parameters(), device)  # the Trainer's default weight decay is 0
    shape = EncoderShape.from_config(model.config)

    def step(batch: dict[str, Any]) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["hf_attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def flops(batch: dict[str, Any]) -> int:
        return training_flops(shape, batch["num_tokens"], batch["num_token_pairs"], batch["num_tokens"])

    return step, model, flops


def count_host_syncs(step: Callable, batch: dict[str, Any], device: torch.device) -> int | None:
    """Host-device synchronisations inside one step (CUDA's sync debug mode); ``None`` off the GPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # Only the per-operation warning: the mode's one-time "prototype feature" notice also says "synchronizing".
    return sum("called a synchronizing cuda operation" in str(w.message).lower() for w in caught)


def measure(
    build: Callable, arch: dict[str, int], batches: list[dict[str, Any]], args: argparse.Namespace, compile: bool
) -> dict[str, Any]:
    """Builds one side, runs its first step, warm-up and timed steps; returns its figures."""
    device = args.device
    gc.collect()  # the previous side's model and optimizer state
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()  # each side and length compiles from scratch: compile time is its own
    torch.manual_seed(0)
    step, model, flops_of = build(arch, device, compile)
    attention = getattr(model.config, "_attn_implementation", "?")
    sync(device)
    start = time.perf_counter()
    step(batches[0])
    sync(device)
    first_step_s = time.perf_counter() - start
    for i in range(1, args.warmup + 1):
        step(batches[i % len(batches)])
    syncs = count_host_syncs(step, batches[0], device)
    timed = [batches[(args.warmup + 1 + i) % len(batches)] for i in range(args.steps)]
    sync(device)
    start = time.perf_counter()
    for batch in timed:
        step(batch)
    sync(device)
    elapsed = time.perf_counter() - start
    tokens = sum(b["num_tokens"] for b in timed)
    model_flops = sum(flops_of(b) for b in timed)
    peak = peak_flops(device, torch.bfloat16)
    result = {
        "tokens_per_sec": tokens / elapsed,
        "tflops_per_sec": model_flops / elapsed / 1e12,
        "mfu": model_flops / elapsed / peak if peak else None,
        "step_ms": 1000 * elapsed / args.steps,
        "first_step_s": first_step_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "model_flops_per_token": model_flops / tokens,
        "host_syncs_per_step": syncs,
        "attention": attention,
    }
    del step, model, flops_of
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    arch = TINY if args.smoke else BERT_BASE
    device = args.device
    # TF32 for whatever float32 matmuls remain outside autocast (both sides).
    torch.set_float32_matmul_precision("high")
    peak = peak_flops(device, torch.bfloat16)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    import lightning
    import transformers

    print(
        f"device: {name}; bf16 peak {f'{peak / 1e12:.4g} TFLOP/s' if peak else 'unknown (no MFU)'}\n"
        f"torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}, "
        f"python {platform.python_version()}",
        flush=True,
    )
    compile = not args.no_compile
    results: dict[str, Any] = {
        "device": name,
        "peak_bf16_flops": peak,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "arch": arch,
        "vocab_size": VOCAB,
        "steps": args.steps,
        "warmup": args.warmup,
        "compile": compile,
        "runs": [],
    }
    for seq_len in args.seq_lens:
        rows = args.batch_size or max(1, args.tokens_per_batch // seq_len)
        host = make_batches(min(args.steps + args.warmup + 1, 8), rows, seq_len)
        batches = []
        for b in host:
            b["hf_attention_mask"] = torch.ones_like(b["input_ids"])  # the tokenizer's mask: all ones in full rows
            batches.append(to_device(b, device))
        print(f"\nseq {seq_len}, batch {rows} x {seq_len}, {args.steps} timed steps after {args.warmup} warm-up")
        header = (
            f"{'':22s}{'tokens/s':>11s}{'TFLOP/s':>9s}{'MFU':>7s}{'peak GiB':>10s}{'step ms':>9s}"
            f"{'1st step s':>12s}{'syncs/step':>12s}"
        )
        print(header)
        pair: dict[str, dict[str, Any]] = {}
        for label, build, compiled in (("project", project_step, compile), ("HF recipe", hf_step, False)):
            tag = f"{label}{' (compiled)' if compiled else ''}"
            try:
                r = measure(build, arch, batches, args, compiled)
            except Exception as err:  # e.g. compilation or memory: keep the other figures of a lent GPU's run
                pair[label] = {"error": f"{type(err).__name__}: {err}"}
                print(f"{tag:22s}failed: {pair[label]['error'].splitlines()[0][:300]}", flush=True)
                continue
            pair[label] = r
            mfu = f"{100 * r['mfu']:6.1f}%" if r["mfu"] is not None else f"{'-':>7s}"
            mem = f"{r['peak_memory_gib']:10.1f}" if r["peak_memory_gib"] is not None else f"{'-':>10s}"
            syncs = f"{r['host_syncs_per_step']:12d}" if r["host_syncs_per_step"] is not None else f"{'-':>12s}"
            print(
                f"{tag:22s}{r['tokens_per_sec']:11,.0f}{r['tflops_per_sec']:9.3g}{mfu}{mem}"
                f"{r['step_ms']:9.1f}{r['first_step_s']:12.1f}{syncs}",
                flush=True,
            )
        results["runs"].append(
            {"seq_len": seq_len, "batch_size": rows, "project": pair["project"], "hf": pair["HF recipe"]}
        )
        if any("error" in r for r in pair.values()):
            continue
        ratio = pair["project"]["tokens_per_sec"] / pair["HF recipe"]["tokens_per_sec"]
        print(f"{'ratio (tokens/s)':22s}{ratio:11.2f}")
        print(f"attention: project {pair['project']['attention']}, HF recipe {pair['HF recipe']['attention']}")
        if compile:
            compile_s = pair["project"]["first_step_s"] - pair["project"]["step_ms"] / 1000
            print(f"compilation: the project's first step took {compile_s:.1f} s more than a timed step")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, a few steps (seconds)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None, help="sequence lengths (default 128 512)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: --tokens-per-batch / L)")
    parser.add_argument("--tokens-per-batch", type=int, default=TOKENS_PER_BATCH, help="tokens per batch")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side and length (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (default 10)")
    parser.add_argument("--no-compile", action="store_true", help="the project without torch.compile")
    parser.add_argument("--compile", action="store_true", help="compile in --smoke too (slow on a CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seq_lens = args.seq_lens or [32, 64]
        args.batch_size = args.batch_size or 4
        args.steps, args.warmup = args.steps or 3, 1 if args.warmup is None else args.warmup
        args.no_compile = not args.compile  # compiling on a CPU takes longer than the smoke run itself
        args.device = torch.device("cpu")
        torch.set_num_threads(1)  # it checks the code, not the speed: one thread stays fast on a busy machine
    else:
        args.seq_lens = args.seq_lens or [128, 512]
        args.steps, args.warmup = args.steps or 50, 10 if args.warmup is None else args.warmup
        if not torch.cuda.is_available():
            print("error: no CUDA device: run on a GPU machine, or pass --smoke", file=sys.stderr)
            return 2
        args.device = torch.device("cuda")
    warnings.filterwarnings("ignore", message=".*self.log.*")  # MLMModule.training_step outside a Trainer
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    failed = any("error" in r[side] for r in results["runs"] for side in ("project", "hf"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
