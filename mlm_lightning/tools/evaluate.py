"""``python -m mlm_lightning evaluate``: several models scored on the same held-out text, side by side.

Each model (an export or any model folder, a ``fit`` checkpoint, a ``pkg://`` path or a hub name) is scored on
the validation sets of a ``fit`` configuration (``--config`` and ``--data.*`` flags: the same files, the same
held-out split, the same seed) by the module's own validation step, so its figures are those ``fit`` logs as
``val/...``. Two passes per model:

* **per token**, with the configuration's masking (``data.masking``, masks fixed by the seed and the row):
  masked tokens, loss (mean cross-entropy over them), perplexity ``exp(loss)``, masked-token accuracy;
* **per word**, with whole-word masking (the same share of words, every piece of a chosen word replaced by
  ``[MASK]``, masks fixed the same way): the summed loss of the pieces of each masked word, over the masked
  words; word perplexity ``exp(word loss)``.

Each model reads the text with its own tokenizer, so a model with an extended vocabulary (``extend-vocab``)
sees other tokens, other rows and so other masks than its base: its per-token figures measure a different task
(fewer, longer tokens) and are not comparable with the base model's. The per-word figures are: both models
predict whole words of the same text, a word's loss being that of all its pieces however many there are.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from mlm_lightning.data import MLMDataModule
from mlm_lightning.data.masking import TokenMasking
from mlm_lightning.errors import MLMError
from mlm_lightning.tools.export import load_model

COLUMNS = (
    "model",
    "set",
    "masked_tokens",
    "loss",
    "perplexity",
    "accuracy",
    "masked_words",
    "word_loss",
    "word_perplexity",
)
OUTPUT_SUFFIXES = (".json", ".csv")


def word_masking(dm: MLMDataModule) -> TokenMasking:
    """Whole-word masking at the configuration's rate, every piece of a chosen word replaced by the mask token.

    The rate is the one validation masks at, that of the evaluation collator of ``dm``'s strategy (whatever it is).
    """
    rate = dm.collator(train=False).mlm_probability
    return TokenMasking(mlm_probability=rate, mask_replace_prob=1.0, random_replace_prob=0.0, whole_word_mask=True)


def score(module: Any, dm: MLMDataModule, trainer_settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One validation of ``module`` on ``dm``'s validation sets: metric prefix -> figures (counts included)."""
    import lightning as L

    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        devices=1,
        use_distributed_sampler=False,
        **trainer_settings,
    )
    trainer.validate(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    found = {}
    for prefix in module.val_prefixes:
        figures = {k.removeprefix(f"{prefix}/"): v for k, v in metrics.items() if k.rsplit("/", 1)[0] == prefix}
        found[prefix] = {**figures, **module.eval_counts.get(prefix, {})}
    return found


def evaluation_module(model: Any, name: str = "") -> Any:
    """An ``MLMModule`` whose network is ``model``, already loaded: the same steps and metrics as ``fit``.

    Built with a one-unit throwaway network (cheap) that ``model`` then replaces; ``name`` is recorded as
    ``model_name_or_path``. Not for training or checkpoints: its architecture settings are not ``model``'s.
    """
    from mlm_lightning.model.module import MLMModule

    module = MLMModule(
        vocab_size=1, hidden_size=1, num_hidden_layers=1, num_attention_heads=1, intermediate_size=1,
        max_position_embeddings=1, dropout=0.0,
    )  # fmt: skip
    module.model = model
    module.hparams["model_name_or_path"] = name
    module.hparams["vocab_size"] = model.config.vocab_size
    return module


def evaluate_models(models: list[str], config: Any, weights_only: bool = True) -> list[dict[str, Any]]:
    """The table's rows: one per model and validation set, in the order given.

    ``weights_only``: read checkpoints weights-only (``False`` only for files the user trusts).
    """
    settings = {
        key: config.trainer.get(key)
        for key in ("accelerator", "precision", "limit_val_batches")
        if config.trainer.get(key) is not None
    }
    import lightning as L

    rows = []
    for name in models:
        if config.get("seed_everything") is not None:
            # A model whose files lack its MLM head (the embedded default's MiniLM) gets a new one, drawn as in
            # `fit` (seeded just before the model is built): its figures are then those fit logs at step 0.
            L.seed_everything(int(config.seed_everything), verbose=False)
        model, tokenizer_name = load_model(name, weights_only=weights_only)
        data = {**config.data.as_dict(), "tokenizer": tokenizer_name}  # each model reads with its own tokenizer
        dm = MLMDataModule(**data)
        tokens = score(evaluation_module(model, name), dm, settings)
        words_dm = MLMDataModule(**{**data, "masking": word_masking(dm)})  # same cache: masking is not in its key
        try:
            words_dm.collator(train=False)
        except MLMError as err:  # whole-word masking needs word boundaries the tokenizer marks (WordPiece)
            print(f"warning: {name}: no per-word figures ({err})", file=sys.stderr)
            words = {}
        else:
            words = score(evaluation_module(model, name), words_dm, settings)
        for prefix, figures in tokens.items():
            per_word = words.get(prefix, {})
            rows.append(
                {
                    "model": name,
                    "set": prefix.partition("/")[2] or "validation",
                    "masked_tokens": int(figures.get("masked_tokens", 0)),
                    "loss": figures.get("loss", math.nan),
                    "perplexity": figures.get("perplexity", math.nan),
                    "accuracy": figures.get("accuracy", math.nan),
                    "masked_words": int(per_word.get("masked_words", 0)),
                    "word_loss": per_word.get("word_loss", math.nan),
                    "word_perplexity": per_word.get("word_perplexity", math.nan),
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (readable as plain text)."""
    formats = {"loss": "{:.4f}", "perplexity": "{:.2f}", "accuracy": "{:.2%}", "word_loss": "{:.4f}",
               "word_perplexity": "{:.2f}", "masked_tokens": "{:,}", "masked_words": "{:,}"}  # fmt: skip
    header = [c.replace("_", " ") for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * (len(COLUMNS) - 2)]
    for row in rows:
        cells = [formats[c].format(row[c]) if c in formats else str(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_output(output: str | None) -> Path | None:
    """The output file, checked before any model is loaded: a ``.json`` or ``.csv`` file in a writable folder."""
    if not output:
        return None
    from mlm_lightning.io.atomic import check_can_write

    path = Path(output).expanduser()
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise MLMError(f"--output {output}: the file name must end in .json or .csv (the format it is written in)")
    if path.is_dir():
        raise MLMError(f"--output {output} is a folder: give a file name ending in .json or .csv")
    check_can_write(path.parent, "--output")
    return path


def write_output(rows: list[dict[str, Any]], path: Path) -> None:
    """Writes the rows as JSON (a list of objects) or CSV (a header and one line per row), atomically."""
    from mlm_lightning.io.atomic import atomic_file

    if path.suffix.lower() == ".json":
        text = json.dumps(rows, indent=1) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
