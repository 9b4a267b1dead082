"""``python -m mlm_lightning fill-mask``: the top candidates for each mask, from an export or a checkpoint.

The predictions come from ``transformers``' fill-mask pipeline; the probe panel on TensorBoard
(:class:`mlm_lightning.callbacks.FillMaskProbes`) uses the same functions during training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mlm_lightning.errors import MLMError
from mlm_lightning.io.sources import resolve_pkg

# One sentence -> one entry per mask -> top-k (token, probability), best first.
Predictions = list[list[tuple[str, float]]]
GENERIC_MASK = "[MASK]"


def load_model(model: str, tokenizer: str | None = None, weights_only: bool = True) -> tuple[Any, Any]:
    """A masked LM and its tokenizer from an exported folder, a ``.ckpt`` file or a hub name.

    A ``.ckpt`` file is read weights-only unless ``weights_only`` is ``False`` (see ``export.load_checkpoint``).
    """
    from mlm_lightning.model.loading import load_masked_lm
    from mlm_lightning.tools.export import from_checkpoint, load_checkpoint, load_tokenizer

    path = Path(resolve_pkg(model)).expanduser()
    if path.is_file():
        return from_checkpoint(load_checkpoint(path, weights_only), path, tokenizer, weights_only)[:2]
    loaded = load_masked_lm(model, hint="an `export` output folder, a .ckpt file or a pkg:// path")
    return loaded, load_tokenizer(tokenizer or (str(path) if path.is_dir() else model))


def with_mask_token(sentences: list[str], tokenizer: Any) -> list[str]:
    """Lets ``[MASK]`` stand for the tokenizer's own mask token; fails if a sentence has no mask at all."""
    mask = tokenizer.mask_token
    out = [s.replace(GENERIC_MASK, mask) for s in sentences]
    missing = [s for s in out if mask not in s]
    if missing:
        raise MLMError(f"no mask token ({mask}) in: {missing[0]!r}. Write {mask} where the model should fill in.")
    return out


def fill_mask(model: Any, tokenizer: Any, sentences: list[str], top_k: int = 5) -> list[Predictions]:
    """Top-``top_k`` candidates with their probabilities for every mask of every sentence.

    With several masks in a sentence, each mask's candidates are scored independently (the pipeline's rule).
    """
    from transformers import pipeline

    if top_k < 1:
        raise MLMError(f"top_k must be at least 1, got {top_k}")
    sentences = with_mask_token(sentences, tokenizer)
    pipe = pipeline("fill-mask", model=model, tokenizer=tokenizer, device=model.device)
    results = []
    for sentence in sentences:
        out: Any = pipe(sentence, top_k=top_k)  # its annotation misses the candidates' dicts
        per_mask = [out] if out and isinstance(out[0], dict) else out  # one mask: a flat list
        results.append([[(c["token_str"], float(c["score"])) for c in cands] for cands in per_mask])
    return results


def printable_token(token: str) -> str:
    """A candidate as it can be shown in a line or a table cell: control characters escaped (``\\n``, ``\\t``).

    A byte-level BPE vocabulary (RoBERTa) has tokens for a newline or a tab; printed as they are, they broke the
    table. Letters of every script stay as they are.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in token) if token else "''"


def format_predictions(sentences: list[str], results: list[Predictions]) -> str:
    """Plain text: each sentence, then one numbered line per candidate (grouped by mask if several)."""
    lines = []
    for sentence, per_mask in zip(sentences, results):
        lines.append(sentence)
        for m, cands in enumerate(per_mask, 1):
            if len(per_mask) > 1:
                lines.append(f"  mask {m}/{len(per_mask)}:")
            shown = [(printable_token(token), prob) for token, prob in cands]
            width = max(len(t) for t, _ in shown)
            lines += [f"  {i:>2}. {token:<{width}}  {prob:.4f}" for i, (token, prob) in enumerate(shown, 1)]
    return "\n".join(lines)


def fill_mask_command(
    model: str,
    sentences: list[str] | None = None,
    top_k: int = 5,
    tokenizer: str | None = None,
    weights_only: bool = True,
) -> None:
    """Prints the most likely tokens, with probabilities, for each mask of each sentence.

    Args:
        model: An ``export`` output folder, a checkpoint (``.ckpt``) written by ``fit``, or a hub name.
        sentences: Sentences with ``[MASK]`` (or the tokenizer's own mask token). None, or ``-``, reads
            one sentence per line from standard input.
        top_k: Candidates shown per mask.
        tokenizer: Tokenizer to use instead of the model's own.
        weights_only: Read a checkpoint's tensors and plain values only (a file that needs more is refused: it
            could run code). ``false`` only for a checkpoint you trust.
    """
    if not sentences or sentences == ["-"]:
        if sys.stdin.isatty():
            raise MLMError("give sentences with [MASK] as arguments, or pipe them in one per line")
        sentences = [line.strip() for line in sys.stdin if line.strip()]
        if not sentences:
            raise MLMError("no sentences on standard input")
    loaded, tok = load_model(model, tokenizer, weights_only)
    print(format_predictions(sentences, fill_mask(loaded, tok, sentences, top_k)))
