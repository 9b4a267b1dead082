"""Training speed per model family: the masked-only MLM head against full logits, in one invocation.

Every family is built from scratch at the same small size (4 layers, hidden 256, 4 heads, intermediate 1024,
the bert-base-uncased vocabulary size of 30,522, position embeddings 514) with ``MLMModule`` and trained with
AdamW on the same random-token batches (batch 16 x 128 tokens, packed rows, BERT masking of 15 %). For each
family, the two head paths alternate on the same model in this process (full, masked-only, full, ...; the
project's training loss ``masked_mean_loss`` with ``model.full_logits`` true or false) and the medians are
reported: real tokens per second over ``--steps`` timed optimizer steps (each path has one untimed warm-up step
first).
"full logits" is the path every family took before the masked-only head covered it (the vocabulary projection at
every position, then the masked positions gathered).

Usage::

    python benchmarks/families.py                       # 8 families, 3 pairs of 4 steps each, batch 16
    python benchmarks/families.py --families bert roberta --repeats 5
    python benchmarks/families.py --smoke               # seconds: tiny models, one step, checks the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package of this checkout, not an installed one

FAMILIES = ["bert", "distilbert", "electra", "roberta", "xlm-roberta", "modernbert", "deberta-v2", "albert"]
ARCH = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
SMOKE_ARCH = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
VOCAB, SMOKE_VOCAB = 30522, 500
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # bert-base-uncased's special ids
SPECIAL_IDS = {"pad_token_id": PAD, "cls_token_id": CLS, "sep_token_id": SEP, "mask_token_id": MASK}


def batches(vocab: int, rows: int, length: int, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` masked batches of random tokens (``[CLS] ... [SEP]`` rows), the project's collator's masking."""
    import numpy as np

    from mlm_lightning.data.masking import MLMCollator

    collate = MLMCollator(
        pad_token_id=PAD, mask_token_id=MASK, vocab_size=vocab, special_token_ids=[PAD, UNK, CLS, SEP, MASK], seed=seed
    )
    rng = np.random.default_rng(seed)
    out = []
    for b in range(count):
        ids = rng.integers(MASK + 1, vocab, size=(rows, length))
        ids[:, 0], ids[:, -1] = CLS, SEP
        out.append(collate([{"input_ids": ids[i], "index": b * rows + i} for i in range(rows)]))
    return out


def build(family: str, arch: dict[str, int], vocab: int) -> tuple[Any, Any]:
    """A new ``family`` model of ``arch`` in an ``MLMModule``, in train mode, with its AdamW optimizer."""
    import torch

    from mlm_lightning.model.module import MLMModule

    torch.manual_seed(0)
    module = MLMModule(
        model_type=family,
        vocab_size=vocab,
        pad_token_id=PAD,
        special_token_ids=SPECIAL_IDS,
        max_position_embeddings=514,
        dropout=0.1,
        **arch,
    ).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, foreach=True)
    return module, optimizer


def run_steps(module: Any, optimizer: Any, data: list[dict[str, Any]], full_logits: bool, steps: int) -> float:
    """Real tokens per second of ``steps`` optimizer steps on the chosen head path (0: one untimed warm-up step)."""
    from mlm_lightning.model.head import masked_mean_loss

    module.hparams.full_logits = full_logits  # read on every step (MLMModule.mlm_head)

    def step(batch: dict[str, Any]) -> None:
        loss = masked_mean_loss(module, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if not steps:
        step(data[0])
        return 0.0
    start, tokens = time.perf_counter(), 0
    for i in range(steps):
        batch = data[1 + i % (len(data) - 1)]
        step(batch)
        tokens += batch["num_tokens"]
    return tokens / (time.perf_counter() - start)


def head_path(module: Any) -> str:
    """Which head path the family takes when ``full_logits`` is off."""
    from mlm_lightning import families

    head = families.masked_head(module.model)
    return "masked-only" if callable(head) else f"full ({head})"


def measure(
    names: list[str], arch: dict[str, int], vocab: int, rows: int, length: int, steps: int, repeats: int
) -> list[dict[str, Any]]:
    """Per family: the medians of ``repeats`` alternating full-logits / masked-only measurements."""
    data = batches(vocab, rows, length, count=steps + 1, seed=1234)
    results = []
    for family in names:
        module, optimizer = build(family, arch, vocab)
        run_steps(module, optimizer, data, True, 0)  # first-call costs (allocations, lazy set-up) of each path
        run_steps(module, optimizer, data, False, 0)
        full, masked = [], []
        for _ in range(repeats):  # alternating, so a slow spell of the machine hits both paths
            full.append(run_steps(module, optimizer, data, True, steps))
            masked.append(run_steps(module, optimizer, data, False, steps))
        row = {
            "family": family,
            "head": head_path(module),
            "parameters": sum(p.numel() for p in module.parameters()),
            "full_tokens_per_sec": statistics.median(full),
            "masked_tokens_per_sec": statistics.median(masked),
            "full_runs": full,
            "masked_runs": masked,
        }
        row["ratio"] = row["masked_tokens_per_sec"] / row["full_tokens_per_sec"]
        results.append(row)
        print(
            f"{family}: full {row['full_tokens_per_sec']:,.0f}, masked-only {row['masked_tokens_per_sec']:,.0f} "
            f"tokens/s ({row['ratio']:.2f}x)",
            file=sys.stderr,
            flush=True,
        )
        del module, optimizer
    return results


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| family | head path | parameters | tokens/s full logits (before) | tokens/s masked-only (after) | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['family']} | {r['head']} | {r['parameters'] / 1e6:.1f} M | {r['full_tokens_per_sec']:,.0f} | "
            f"{r['masked_tokens_per_sec']:,.0f} | {r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison and prints the table (progress per family on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=FAMILIES, help="model_type values (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per measurement")
    parser.add_argument(
        "--repeats", type=int, default=None, help="alternating full / masked-only pairs per family (3; smoke: 1)"
    )
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128, help="tokens per row")
    parser.add_argument("--smoke", action="store_true", help="tiny models, one step, one pair: checks the script")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    from mlm_lightning.quiet import quiet_libraries

    if args.smoke:
        arch, vocab, rows, length, steps, repeats = SMOKE_ARCH, SMOKE_VOCAB, 2, 16, 1, args.repeats or 1
    else:
        arch, vocab, rows, length, steps = ARCH, VOCAB, args.batch_size, args.length, args.steps
        repeats = args.repeats or 3
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {arch}, vocabulary {vocab}, "
        f"batch {rows} x {length}, {steps} timed steps, {repeats} pairs (medians)",
        file=sys.stderr,
    )
    with quiet_libraries():
        results = measure(args.families, arch, vocab, rows, length, steps, repeats)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
