"""Resume never silently continues something else (issue 19): other data, or an older checkpoint of the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mlm_lightning.__main__ import main
from tests.test_bad_input import set_arg


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_resume_on_other_data_names_the_change_unless_allowed(
    tiny_args: list[str], corpus_file: Path, tmp_path: Path, capsys
) -> None:
    corpus = tmp_path / "corpus.txt"
    shutil.copy(corpus_file, corpus)
    args = set_arg(set_arg(tiny_args, "--trainer.max_steps", "4"), "--data.train_files", f"[{corpus}]")
    assert main(["fit", *args]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    resume = [*set_arg(args, "--trainer.max_steps", "6"), "--ckpt_path", "last"]
    capsys.readouterr()

    assert main(["fit", *set_arg(resume, "--data.max_seq_length", "16")]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and "data.max_seq_length: 32 -> 16" in errors[0], errors
    assert "data.resume_with_changed_data=true" in errors[0]

    moved = tmp_path / "moved.txt"  # the same content under another name is the same data
    shutil.copy(corpus, moved)
    with corpus.open("a", encoding="utf-8") as fh:
        fh.write("a new document about the king.\n")
    assert main(["fit", *resume]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and f"data.train_files: {corpus} changed" in errors[0], errors
    assert last.read_bytes() == before  # refused before anything was written

    with pytest.warns(UserWarning, match="resuming .* on other data .*data.train_files") as caught:
        assert main(["fit", *resume, "--data.resume_with_changed_data", "true"]) == 0
    assert len([w for w in caught if "on other data" in str(w.message)]) == 1
    assert torch.load(last, weights_only=True)["global_step"] == 6

    capsys.readouterr()
    moved_args = set_arg(set_arg(resume, "--data.train_files", f"[{moved}]"), "--trainer.max_steps", "8")
    assert main(["fit", *moved_args]) == 2  # step 6 was trained on the new text, not on the old one
    assert f"{corpus} left out, {moved} added" in _errors(capsys)[0]


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_resuming_an_older_checkpoint_of_the_run_never_replaces_its_newer_last(
    tiny_args: list[str], tmp_path: Path, capsys
) -> None:
    args = set_arg(set_arg(tiny_args, "--trainer.max_steps", "8"), "--trainer.val_check_interval", "4")
    args += ["--checkpoint.save_top_k", "-1"]
    assert main(["fit", *args]) == 0
    folder = tmp_path / "run" / "checkpoints"
    older = next(folder.glob("epoch*-step4-*.ckpt"))
    before = (folder / "last.ckpt").read_bytes()
    capsys.readouterr()
    assert main(["fit", *set_arg(args, "--trainer.max_steps", "10"), "--ckpt_path", str(older)]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1 and f"{older} (step 4) is older than this run's" in errors[0], errors
    assert "lose steps 5-8" in errors[0] and "--trainer.default_root_dir NEW_FOLDER" in errors[0]
    assert (folder / "last.ckpt").read_bytes() == before
