"""``python -m mlm_lightning evaluate``: figures checked against a hand computation from the models' logits."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mlm_lightning.__main__ import main
from mlm_lightning.cli.config import parse_config
from mlm_lightning.data import MLMDataModule
from mlm_lightning.data.collator import IGNORE_INDEX
from mlm_lightning.tools.evaluate import word_masking
from tests.conftest import named_sets as _named_sets
from tests.conftest import tiny_cli_args


@pytest.fixture
def eval_args(corpus_file: Path, tokenizer_dir: Path, general_file: Path, tmp_path: Path) -> list[str]:
    return [*tiny_cli_args(corpus_file, tokenizer_dir, tmp_path / "run"), *_named_sets(general_file)]


def _by_hand(model: torch.nn.Module, dm: MLMDataModule, split: str, batches: int) -> dict[str, float]:
    """Loss, accuracy and words of the first ``batches`` batches, from the full logits (no module code)."""
    tok = dm.tokenizer
    special = set(tok.all_special_ids)
    total, count, correct, words = 0.0, 0, 0, 0
    with torch.no_grad():
        for i, batch in enumerate(dm.loader(split)):
            if i == batches:
                break
            logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
            labels = batch["labels"]
            chosen = labels != IGNORE_INDEX
            total += F.cross_entropy(logits[chosen].double(), labels[chosen], reduction="sum").item()
            count += int(chosen.sum())
            correct += int((logits[chosen].argmax(-1) == labels[chosen]).sum())
            original = torch.where(chosen, labels, batch["input_ids"])
            for row, ids in enumerate(original.tolist()):
                for p, token in enumerate(tok.convert_ids_to_tokens(ids)):
                    # A chosen word starts at a chosen piece that is not "##...", or that follows a special token.
                    if chosen[row, p] and (not token.startswith("##") or p == 0 or ids[p - 1] in special):
                        words += 1
    return {"loss": total / count, "count": count, "accuracy": correct / count, "words": words, "total": total}


@pytest.mark.slow
def test_figures_match_a_hand_computation(
    trained_run: Path, eval_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    export = trained_run / "export"
    out = tmp_path / "table.json"
    assert main(["evaluate", "--models", str(export), "--output", str(out), *eval_args]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["set"]) for r in rows] == [(str(export), "domain"), (str(export), "general")]
    printed = capsys.readouterr().out
    assert "| model | set | masked tokens | loss | perplexity | accuracy |" in printed

    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(export).eval()
    config = parse_config(eval_args)
    data = {**config.data.as_dict(), "tokenizer": str(export)}
    limit = config.trainer.limit_val_batches  # tiny.yaml: 8 batches, as fit validates
    for row in rows:
        split = f"val/{row['set']}"
        dm = MLMDataModule(**data)
        dm.setup("validate")
        tokens = _by_hand(model, dm, split, limit)
        assert row["masked_tokens"] == tokens["count"]
        assert row["loss"] == pytest.approx(tokens["loss"], rel=1e-5)
        assert row["perplexity"] == pytest.approx(math.exp(tokens["total"] / tokens["count"]), rel=1e-4)
        assert row["accuracy"] == pytest.approx(tokens["accuracy"], abs=1e-6)
        words_dm = MLMDataModule(**{**data, "masking": word_masking(dm)})
        words_dm.setup("validate")
        words = _by_hand(model, words_dm, split, limit)
        assert row["masked_words"] == words["words"] > 0
        # Per word: every piece of a chosen word is masked (all [MASK]), and a word's loss is its pieces' sum.
        assert row["word_loss"] == pytest.approx(words["total"] / words["words"], rel=1e-5)
        assert row["word_perplexity"] == pytest.approx(math.exp(words["total"] / words["words"]), rel=1e-4)
        batch = next(iter(words_dm.loader(split)))
        assert (batch["input_ids"].flatten()[batch["masked_positions"]] == words_dm.tokenizer.mask_token_id).all()


@pytest.mark.slow
def test_evaluate_reproduces_the_run_before_and_after(
    adapted_run: Path, trained_run: Path, corpus_file: Path, tokenizer_dir: Path, general_file: Path, tmp_path: Path
) -> None:
    # The base model at step 0 and the best checkpoint, on the same rows and masks as the run's validations.
    (best,) = (adapted_run / "checkpoints").glob("epoch*.ckpt")
    record = torch.load(best, weights_only=False)["mlm_lightning"]
    args = [*tiny_cli_args(corpus_file, tokenizer_dir, tmp_path / "x"), *_named_sets(general_file)]
    out = tmp_path / "table.csv"
    models = [str(trained_run / "export"), str(best), str(adapted_run / "export")]
    assert main(["evaluate", "--models", *models, "--output", str(out), *args]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    for row in rows:
        recorded = record["base_metrics"] if row["model"] == models[0] else record["val_metrics"]
        for key in ("loss", "perplexity", "accuracy"):
            assert float(row[key]) == pytest.approx(recorded[f"val/{row['set']}/{key}"], rel=1e-5), (row, key)
    assert [r["loss"] for r in rows[2:4]] == [r["loss"] for r in rows[4:6]]  # checkpoint and its export agree


def test_bad_inputs_are_one_line(eval_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    garbage = tmp_path / "broken.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    cases = [
        ([], "the following arguments are required: --models"),
        (["--models", str(tmp_path / "missing")], "no such file or folder"),
        (["--models", str(garbage)], "broken.ckpt"),
        (["--models", str(folder)], "could not load model"),
        (["--models", str(folder), "--output", str(tmp_path / "t.txt")], ".json or .csv"),
    ]
    for extra, words in cases:
        assert main(["evaluate", *extra, *eval_args]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "t.txt").exists()


@pytest.mark.slow
def test_an_extended_vocabulary_is_read_with_its_own_tokenizer(
    trained_run: Path, eval_args: list[str], corpus_file: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForMaskedLM

    extended = tmp_path / "extended"
    args = ["--model", str(trained_run / "export"), "--files", str(corpus_file), "--num_tokens", "5"]
    assert main(["extend-vocab", *args, "--output_dir", str(extended)]) == 0
    out = tmp_path / "table.json"
    assert main(["evaluate", "--models", str(extended), "--output", str(out), *eval_args]) == 0
    rows = json.loads(out.read_text())
    model = AutoModelForMaskedLM.from_pretrained(extended).eval()
    config = parse_config(eval_args)
    data = {**config.data.as_dict(), "tokenizer": str(extended)}
    added = set(json.loads((extended / "extend_vocab.json").read_text())["added"][0]["word"].split())
    for row in rows:
        dm = MLMDataModule(**{**data, "masking": word_masking(MLMDataModule(**data))})
        dm.setup("validate")
        assert dm.tokenizer.tokenize(next(iter(added))) == list(added)  # its own tokenizer: the new whole word
        words = _by_hand(model, dm, f"val/{row['set']}", config.trainer.limit_val_batches)
        assert row["masked_words"] == words["words"]  # a new whole-word token is a word of its own
        assert row["word_loss"] == pytest.approx(words["total"] / words["words"], rel=1e-5)


@pytest.mark.slow
def test_a_model_without_its_head_scores_as_fit_saw_it_at_step_0(
    tokenizer_dir: Path, eval_args: list[str], tmp_path: Path
) -> None:
    # An encoder saved without its MLM head (like the embedded default's MiniLM): the head is drawn new on load.
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mlm_lightning.cli.lightning_cli import run_cli

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    encoder = tmp_path / "encoder"
    BertModel(config).save_pretrained(encoder)
    tok.save_pretrained(encoder)
    args = [*eval_args, "--model.model_name_or_path", str(encoder)]
    cli = run_cli(["fit", *args, "--trainer.max_steps", "1", "--trainer.val_check_interval", "1"])
    step0 = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ValidateBeforeFit").base_metrics
    out = tmp_path / "table.json"
    # Twice in one call: each model's head is drawn from the seed, not from wherever the generator has got to.
    assert main(["evaluate", "--models", str(encoder), str(encoder), "--output", str(out), *args]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 4
    for row in rows:
        assert row["loss"] == pytest.approx(step0[f"val/{row['set']}/loss"], rel=1e-6)
