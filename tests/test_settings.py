"""Settings: every value's range is checked when the config is parsed, and resuming keeps the network's settings.

Through the real command line (``main(["fit", ...])``): a bad value is one line on stderr naming the setting and
its allowed range, exit status 2, before anything is written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from tests.test_bad_input import set_arg

# (setting, value, what the message says). The values of the issue and one per kind of check run always; the others
# (each costs a parser build, about a second) with the slow tests.
SLOW = pytest.mark.slow
MASKING = "data.masking"
BAD_VALUES = [
    ("--data.masking.mlm_probability", "-0.1", f"{MASKING}.mlm_probability must be a number > 0 and <= 1, got -0.1"),
    ("--data.masking.mlm_probability", "1.5", f"{MASKING}.mlm_probability must be a number > 0 and <= 1, got 1.5"),
    pytest.param(
        "--data.masking.mlm_probability", "0", f"{MASKING}.mlm_probability must be a number > 0 and <= 1", marks=SLOW
    ),
    (
        "--data.masking.mask_replace_prob",
        "0.95",
        "data.masking.mask_replace_prob + data.masking.random_replace_prob must be at most 1",
    ),
    ("--data.masking.random_replace_prob", "1.2", f"{MASKING}.random_replace_prob must be a number >= 0 and <= 1"),
    ("--data.batch_size", "0", "data.batch_size must be an integer > 0, got 0"),
    pytest.param(
        "--data.eval_batch_size", "0", "data.eval_batch_size must be an integer > 0, or null, got 0", marks=SLOW
    ),
    ("--data.max_seq_length", "4", "data.max_seq_length must be an integer >= 8"),
    pytest.param("--data.num_workers", "-1", "data.num_workers must be an integer >= 0", marks=SLOW),
    pytest.param("--data.num_proc", "0", "data.num_proc must be an integer > 0, or null", marks=SLOW),
    pytest.param("--data.seed", "-1", "data.seed must be an integer >= 0", marks=SLOW),
    pytest.param("--data.val_fraction", "1.5", "data.val_fraction must be a number >= 0 and <= 1", marks=SLOW),
    ("--data.val_fraction", "0", "data.val_fraction must be in (0, 1) when data.val_files is unset"),
    ("--model.learning_rate", "-0.001", "model.learning_rate must be a number >= 0, got -0.001"),
    pytest.param("--model.weight_decay", "-0.1", "model.weight_decay must be a number >= 0", marks=SLOW),
    ("--model.warmup_steps", "-5", "model.warmup_steps must be an integer >= 0, got -5"),
    pytest.param("--model.warmup_ratio", "1.5", "model.warmup_ratio must be a number >= 0 and <= 1", marks=SLOW),
    ("--model.betas", "[0.9, 1.0]", "model.betas must be a number >= 0 and < 1, got 1.0"),
    pytest.param("--model.eps", "-0.00000001", "model.eps must be a number >= 0", marks=SLOW),
    pytest.param("--model.dropout", "1.0", "model.dropout must be a number >= 0 and < 1", marks=SLOW),
    pytest.param("--model.hidden_size", "0", "model.hidden_size must be an integer > 0", marks=SLOW),
    ("--model.hidden_size", "33", "model.hidden_size=33 is not a multiple of model.num_attention_heads=2"),
    pytest.param("--model.num_hidden_layers", "0", "model.num_hidden_layers must be an integer > 0", marks=SLOW),
    pytest.param("--model.pad_vocab_multiple", "0", "model.pad_vocab_multiple must be an integer > 0", marks=SLOW),
    pytest.param("--model.pad_token_id", "1", "model.pad_token_id is taken from the tokenizer", marks=SLOW),
    ("--trainer.max_steps", "-2", "trainer.max_steps must be -1 (no limit) or >= 0, got -2"),
    pytest.param(
        "--trainer.max_epochs",
        "-5",
        "trainer.max_epochs must be -1 (no limit), >= 0 or null",
        marks=SLOW,
    ),
    ("--trainer.accumulate_grad_batches", "0", "trainer.accumulate_grad_batches must be >= 1"),
    pytest.param("--trainer.gradient_clip_val", "-1", "trainer.gradient_clip_val must be >= 0", marks=SLOW),
    ("--trainer.limit_val_batches", "1.5", "invalid value 1.5 for limit_val_batches"),
    ("--checkpoint.save_last_every_n_steps", "-1", "checkpoint.save_last_every_n_steps must be an integer >= 0"),
    ("--checkpoint.save_top_k", "-3", "save_top_k=-3. Must be >= -1"),
    ("--nonfinite.max_skipped", "-1", "nonfinite.max_skipped must be an integer >= 0"),
    pytest.param(
        "--corpus_report.max_unk_rate",
        "2",
        "corpus_report.max_unk_rate must be a number >= 0 and <= 1",
        marks=SLOW,
    ),
    ("--probes.top_k", "0", "probes.top_k must be an integer > 0"),
]


def exit_code(args: list[str]) -> int | str | None:
    """``main``'s status: returned (checks in the code) or raised (the parser's checks)."""
    try:
        return main(args)
    except SystemExit as stop:
        return stop.code


def _id(case: object) -> str:
    key, value, _ = case.values if hasattr(case, "values") else case
    return f"{key[2:]}={value}"


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES, ids=[_id(c) for c in BAD_VALUES])
def test_bad_value_is_one_line_naming_setting_and_range(
    key: str, value: str, message: str, tiny_args: list[str], tmp_path: Path, capsys
) -> None:
    assert exit_code(["fit", *set_arg(tiny_args, key, value)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    run = tmp_path / "run"
    assert not run.exists() or not [p for p in run.rglob("*") if p.is_file()]
    cache = Path(os.environ["MLM_LIGHTNING_CACHE"])
    assert not [p for p in cache.rglob("*") if p.is_file()], "the cache was written"


def test_help_shows_the_ranges(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--data.batch_size BATCH_SIZE Rows per training batch on each device. (type: PositiveInt" in out
    assert "--data.masking.help" in out  # the masking strategy's settings have a help of their own
    with pytest.raises(SystemExit):
        main(["fit", "--data.masking.help", "TokenMasking"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--data.masking.mlm_probability MLM_PROBABILITY" in out
    assert "(type: NonZeroProbability, default: 0.15)" in out


# ---------------------------------------------------------------------------------------------------- resume
def files_of(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def trained(trained_run: Path, tmp_path: Path) -> Path:
    """The shared 12-step tiny run (hidden size 32, lr 1e-3), copied to where tiny_args writes; its last.ckpt."""
    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("which", ["file", "last"])
def test_resume_with_another_architecture_is_an_error_naming_both_values(
    which: str, trained: Path, tiny_args: list[str], tmp_path: Path, capsys
) -> None:
    before = files_of(tmp_path)
    ckpt = str(trained) if which == "file" else "last"
    args = [*tiny_args, "--trainer.max_steps", "14", "--model.hidden_size", "64", "--ckpt_path", ckpt]
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "model.hidden_size is 64 but the checkpoint" in errors[0] and "has 32" in errors[0], errors[0]
    assert files_of(tmp_path) == before  # nothing written


def test_resume_with_other_config_overrides_is_an_error_naming_both_values(
    trained: Path, tiny_args: list[str], tmp_path: Path, capsys
) -> None:
    before = files_of(tmp_path)
    overrides = ["--model.config_overrides", '{"type_vocab_size": 1}']  # the checkpoint's: none
    assert main(["fit", *tiny_args, "--trainer.max_steps", "14", *overrides, "--ckpt_path", str(trained)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "model.config_overrides is {'type_vocab_size': 1} but the checkpoint" in errors[0]
    assert "has None" in errors[0], errors[0]
    assert files_of(tmp_path) == before  # nothing written


def test_resume_applies_changed_optimisation_settings(trained: Path, tiny_args: list[str]) -> None:
    # Lightning restores the optimizer's settings and the scheduler's base learning rate with their state, and
    # LightningCLI copies a checkpoint file's hyperparameters over the configured ones: both undid the change.
    args = [*tiny_args, "--trainer.max_steps", "14", "--model.learning_rate", "0.0005", "--model.weight_decay", "0.02"]
    assert main(["fit", *args, "--model.scheduler", "constant", "--ckpt_path", str(trained)]) == 0
    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["global_step"] == 14
    assert ckpt["hyper_parameters"]["learning_rate"] == 0.0005
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [0.0005, 0.0005]
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.0005, 0.0005]
    assert [g["weight_decay"] for g in groups] == [0.02, 0.0]
    assert [g["lr"] for g in groups] == [0.0005, 0.0005]  # constant after warm-up: the new peak


def test_warmup_changes_on_resume_only_with_a_new_scheduler(
    trained: Path, tiny_args: list[str], tmp_path: Path, capsys
) -> None:
    # The resumed run keeps the checkpoint's schedule, so a new warm-up alone would be listed as used and ignored.
    before = files_of(tmp_path)
    args = [*tiny_args, "--trainer.max_steps", "14", "--model.warmup_steps", "2", "--ckpt_path", str(trained)]
    assert main(["fit", *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "model.warmup_steps is 2 but the checkpoint" in errors[0] and "has 4" in errors[0]
    assert files_of(tmp_path) == before
    assert main(["fit", *args, "--model.scheduler", "cosine"]) == 0  # a new schedule takes the new warm-up


def test_resuming_a_finished_schedule_says_more_steps_would_not_train(trained: Path, tiny_args: list[str]) -> None:
    # The shared run's linear schedule reached 0 at its last step: neither keep nor stretch can train on.
    for how, steps in (("keep", "14"), ("stretch", "16")):
        args = [*tiny_args, "--trainer.max_steps", steps, "--model.resume_schedule", how, "--ckpt_path", str(trained)]
        with pytest.warns(UserWarning, match="already ended at step 12 with a learning rate of 0"):
            assert main(["fit", *args]) == 0
