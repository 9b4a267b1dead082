"""``python -m mlm_lightning export``: a training checkpoint becomes a standard Hugging Face model folder.

The folder holds the model (``model.safetensors`` + ``config.json``) and tokenizer written by
``save_pretrained``, and a model card (``README.md``). It loads with ``AutoModelForMaskedLM.from_pretrained``
and ``pipeline("fill-mask", model=...)`` without network access.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlm_lightning.errors import MLMError
from mlm_lightning.io.atomic import atomic_output_dir, check_writable
from mlm_lightning.io.sources import PKG_SCHEME
from mlm_lightning.quiet import no_transformers_progress

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from mlm_lightning.model.base_head import BaseHead


def load_checkpoint(ckpt_path: str | os.PathLike, weights_only: bool = True) -> dict[str, Any]:
    """Reads a Lightning checkpoint of an ``MLMModule`` onto the CPU.

    Weights-only unless ``weights_only`` is ``False`` (a file the user trusts): a checkpoint that would build other
    objects is refused with one line (``checkpoint_io.read_checkpoint``), as it could run code.
    """
    from mlm_lightning.io.checkpoint_io import read_checkpoint  # imports Lightning: not for fill-mask on an export

    path = Path(ckpt_path).expanduser()
    # Mapped, not read: only the model's weights are used, and the optimizer's state (two thirds of the file) stays
    # on disk; at the end of fit the export runs inside the trainer, at the run's memory peak (benchmarks/README.md).
    ckpt = read_checkpoint(path, map_location="cpu", weights_only=weights_only, mmap=True)
    if "hyper_parameters" not in ckpt:
        raise MLMError(f"{path}: not a checkpoint written by `python -m mlm_lightning fit`")
    return ckpt


def masked_lm_from_checkpoint(
    ckpt: dict[str, Any], ckpt_path: str | os.PathLike = "", weights_only: bool = True
) -> PreTrainedModel:
    """The checkpoint's ``AutoModelForMaskedLM``, in eval mode on the CPU.

    Built from the architecture stored in the checkpoint, so a model fine-tuned from a hub name exports
    offline; older checkpoints without it are rebuilt through ``MLMModule.load_from_checkpoint``.
    """
    stored = ckpt.get("mlm_lightning", {}).get("model_config")
    if stored is None:
        from mlm_lightning.model.module import MLMModule

        # Its annotation says str | Path, but it opens any os.PathLike (through fsspec).
        module = MLMModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=weights_only)  # type: ignore[arg-type]
        return module.model.eval()
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = type(AutoConfig.for_model(stored["model_type"])).from_dict(stored)
    model = AutoModelForMaskedLM.from_config(config)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval()


def load_tokenizer(name_or_path: str | None) -> Any:
    """The tokenizer a model was trained with (``pkg://`` paths allowed); ``--tokenizer`` overrides it."""
    from mlm_lightning.data.tokenizer import load_tokenizer as load

    if not name_or_path:
        raise MLMError("the checkpoint records no tokenizer: pass --tokenizer")
    return load(name_or_path, setting="--tokenizer")


def from_checkpoint(
    ckpt: dict[str, Any], ckpt_path: str | os.PathLike, tokenizer: str | None = None, weights_only: bool = True
) -> tuple:
    """``(model, tokenizer, tokenizer name)`` of a checkpoint, ready for ``save_pretrained`` or a pipeline."""
    name = tokenizer or ckpt["hyper_parameters"].get("tokenizer_name_or_path")
    tok = load_tokenizer(name)
    model = masked_lm_from_checkpoint(ckpt, ckpt_path, weights_only)
    if len(tok) > model.config.vocab_size:
        raise MLMError(f"tokenizer '{name}' has {len(tok)} tokens but the model only {model.config.vocab_size}")
    if ckpt["hyper_parameters"].get("pad_vocab_multiple", 1) > 1 and model.config.vocab_size > len(tok):
        # Rows added only to round the vocabulary up for speed (model.pad_vocab_multiple): no token maps to
        # them, and a pipeline must not predict them.
        model.resize_token_embeddings(len(tok))
    return model, tok, name


def load_model(name: str, head_warning: bool = True, weights_only: bool = True) -> tuple[Any, str]:
    """``(masked LM in eval mode, its tokenizer's name or path)`` for a checkpoint, a model folder or a hub name.

    ``head_warning``: warn when the model's files lack weights (its MLM head): off for users of the encoder only.
    A checkpoint is read weights-only unless ``weights_only`` is ``False`` (``--weights_only false``, as for ``fit``).

    Raises:
        MLMError: The file or folder does not exist, is not a checkpoint or a model, or cannot be read.
    """
    from mlm_lightning.model.loading import load_masked_lm

    path = Path(name).expanduser()
    looks_local = name.startswith(("/", ".", "~")) or name.endswith(".ckpt")
    if not name.startswith(PKG_SCHEME) and looks_local and not path.exists():
        raise MLMError(f"model '{name}': no such file or folder")
    if path.is_file():
        ckpt = load_checkpoint(path, weights_only)
        model, _, tokenizer_name = from_checkpoint(ckpt, path, weights_only=weights_only)
        return model.eval(), tokenizer_name
    # Users of the encoder only (no head warning) need no MLM head: the shipped one is not read for them either.
    base_head: BaseHead = "auto" if head_warning else "none"
    return load_masked_lm(name, for_training=not head_warning, base_head=base_head).eval(), name


PROBE_RECORD = "probe.json"  # written beside the checkpoints by fit's end-of-run probe (probe.enabled)


def probe_record(ckpt_path: str | os.PathLike) -> dict[str, Any] | None:
    """The probe record ``fit`` wrote beside ``ckpt_path`` for that very file (name, size and time), or ``None``."""
    import json

    path = Path(ckpt_path)
    try:
        record = json.loads((path.parent / PROBE_RECORD).read_text(encoding="utf-8"))
        stat = path.stat()
    except (OSError, ValueError):
        return None
    same = isinstance(record, dict) and record.get("checkpoint") == [path.name, stat.st_size, stat.st_mtime_ns]
    return record if same and isinstance(record.get("table"), str) else None


def _is_hub_id(name: str | None) -> bool:
    if not name:
        return False
    return not name.startswith(PKG_SCHEME) and "://" not in name and not Path(name).exists()


def model_card(
    ckpt: dict[str, Any],
    model: PreTrainedModel,
    tokenizer_name: str,
    title: str,
    probe_table: str | None = None,
    location: str | None = None,
) -> str:
    """A short model card: where the model came from, what it was trained on, how well it does.

    ``probe_table``: the downstream probe of this checkpoint at the end of ``fit`` (``probe.enabled``), if any.
    ``location`` is what its usage example loads (the export's absolute path, so it works from any folder);
    ``None``: ``title``.
    """
    hp = ckpt["hyper_parameters"]
    data = ckpt.get("datamodule_hyper_parameters", {})
    metrics = ckpt.get("mlm_lightning", {}).get("val_metrics", {})
    cfg = model.config
    base = hp.get("model_name_or_path")
    arch = f"{cfg.model_type}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}"
    n_params = sum(p.numel() for p in model.parameters())
    files = list(data.get("train_files") or [])
    rows = [
        ("base model", f"`{base}`" if base else f"none: trained from scratch ({arch})"),
        ("architecture", f"{arch}, {n_params / 1e6:.1f}M parameters"),
        ("tokenizer", f"`{tokenizer_name}`"),
        ("training data", ", ".join(f"`{f}`" for f in files) or "not recorded"),
        ("validation data", ", ".join(f"`{f}`" for f in data.get("val_files") or []) or "held-out share of the above"),
        ("optimizer steps", str(ckpt.get("global_step", "?"))),
        ("max sequence length", str(data.get("max_seq_length", "?"))),
    ]
    from mlm_lightning.tools.report import before_after_table, metric_sets

    for prefix in metric_sets(metrics):
        name = f" ({prefix.partition('/')[2]})" if "/" in prefix else ""
        rows += [
            (f"validation loss{name}", f"{metrics[f'{prefix}/loss']:.4f}"),
            (f"validation perplexity{name}", f"{metrics.get(f'{prefix}/perplexity', float('nan')):.2f}"),
            (
                f"validation masked-token accuracy{name}",
                f"{100 * metrics.get(f'{prefix}/accuracy', float('nan')):.2f}%",
            ),
        ]
    if not metric_sets(metrics):
        rows.append(("validation", "no validation ran before this checkpoint"))
    base_metrics = ckpt.get("mlm_lightning", {}).get("base_metrics") or {}
    before_after = []
    if base_metrics and metric_sets(metrics):
        table = before_after_table(base_metrics, metrics, ckpt.get("global_step", "?"))
        before_after = ["## Before and after", "", table, ""]
    front = ["---", "library_name: transformers", "pipeline_tag: fill-mask", "tags:", "- mlm-lightning", "- fill-mask"]
    if _is_hub_id(base):
        front.append(f"base_model: {base}")
    front.append("---")
    table = "\n".join(["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])
    return "\n".join(
        [
            *front,
            "",
            f"# {title}",
            "",
            "A masked-language model trained with mlm-lightning (masked-token cross-entropy; validation on a "
            "held-out split with fixed masks).",
            "",
            table,
            "",
            "Validation metrics are those of the last validation before the checkpoint was saved; perplexity is "
            "exp(validation loss), the loss being the mean cross-entropy over all masked validation tokens.",
            "",
            *before_after,
            *(["## Downstream probe", "", probe_table, ""] if probe_table else []),
            "## Use",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            f'fill = pipeline("fill-mask", model={json.dumps(location or title, ensure_ascii=False)})',
            'print(fill("The [MASK] of the soul."))',
            "```",
            "",
        ]
    )


def export(
    ckpt_path: str, output_dir: str, overwrite: bool = False, tokenizer: str | None = None, weights_only: bool = True
) -> Path:
    """Writes a checkpoint as a Hugging Face model folder: model, tokenizer and model card.

    The folder is written into a temporary folder beside ``output_dir`` and renamed into place when complete.

    Args:
        ckpt_path: Checkpoint written by ``fit`` (e.g. ``logs/base/checkpoints/last.ckpt``).
        output_dir: Folder to create; loads with ``AutoModelForMaskedLM.from_pretrained(output_dir)``.
        overwrite: Replace ``output_dir`` if it exists (otherwise that is an error).
        tokenizer: Tokenizer to save with the model; ``None`` uses the one recorded in the checkpoint.
        weights_only: Read the checkpoint's tensors and plain values only (a file that needs more is refused: it
            could run code). ``false`` only for a checkpoint you trust.
    """
    target = check_writable(output_dir, overwrite)
    ckpt = load_checkpoint(ckpt_path, weights_only)
    model, tok, tokenizer_name = from_checkpoint(ckpt, ckpt_path, tokenizer, weights_only)
    from mlm_lightning.families import max_sequence_length

    # Pipelines truncate to the tokenizer's limit: make it the model's, as hub tokenizers do.
    max_positions = max_sequence_length(model.config.to_dict())  # RoBERTa's 514 positions take 512 tokens
    if max_positions and (tok.model_max_length is None or tok.model_max_length > max_positions):
        tok.model_max_length = max_positions
    with atomic_output_dir(target, overwrite) as work:
        with no_transformers_progress():
            model.save_pretrained(work, safe_serialization=True)
        tok.save_pretrained(work)
        record = probe_record(ckpt_path)  # written by fit's end-of-run probe for this very checkpoint file
        table = record["table"] if record else None
        card = model_card(ckpt, model, tokenizer_name, target.name, table, str(target.absolute()))
        (work / "README.md").write_text(card.replace("[MASK]", tok.mask_token), encoding="utf-8")
    print(f"exported {ckpt_path} (step {ckpt.get('global_step', '?')}) to {target}")
    return target
