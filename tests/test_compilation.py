"""model.compile: null compiles on a CPU with a C++ compiler (off on a GPU); true without one is one line, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from mlm_lightning.errors import MLMError
from mlm_lightning.model import compilation
from mlm_lightning.model.module import MLMModule

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-c++-compiler")


@pytest.fixture
def a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", sys.executable)  # any program on the disk stands for one: only its presence counts


def test_null_compiles_on_a_cpu_with_a_compiler(a_compiler: None) -> None:
    on, why = compilation.default_compile("cpu")
    assert on and sys.executable in why
    assert compilation.default_compile("cuda")[0] is False  # a GPU's short runs do not win the compilation back


def test_null_does_not_compile_without_a_compiler(no_compiler: None) -> None:
    assert compilation.default_compile("cpu") == (False, "no C++ compiler ($CXX or g++) for torch.compile's CPU code")


def test_true_on_a_cpu_without_a_compiler_is_refused(no_compiler: None) -> None:
    with pytest.raises(MLMError, match="no-such-c\\+\\+-compiler was not found: install one"):
        compilation.check_can_compile("cpu")
    compilation.check_can_compile("cuda")  # a GPU's code is built by Triton, not a C++ compiler


def _set_up(module: MLMModule) -> None:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    module.setup("fit")


def test_the_module_decides_at_set_up_and_says_so_once(a_compiler: None, caplog: pytest.LogCaptureFixture) -> None:
    import torch

    module = MLMModule(compile=None, **TINY)
    assert not module.compilation.compiles  # nothing decided before a run's device is known
    with caplog.at_level("INFO"):
        _set_up(module)
        _set_up(module)  # validation before fit sets up again
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model.compile")]
    assert len(notes) == 1 and notes[0].startswith("model.compile: true (a CPU with a C++ compiler")
    assert module.compilation.compiles and isinstance(module.encoder(), torch._dynamo.eval_frame.OptimizedModule)
    assert module.hparams.compile is None  # the checkpoint keeps the rule, not this machine's answer


def test_on_a_cpu_only_training_runs_compiled(a_compiler: None) -> None:
    import torch

    module = MLMModule(compile=True, **TINY)
    _set_up(module)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "masked_positions": torch.tensor([1])}
    module.eval()  # validation: every batch shape would compile (~9 s each on base.yaml) for no faster steps
    assert module.encoder() is module.model.base_model and module.compile_width(batch) is batch
    module.train()
    assert isinstance(module.encoder(), torch._dynamo.eval_frame.OptimizedModule)


def test_the_module_runs_uncompiled_without_a_compiler(no_compiler: None) -> None:
    module = MLMModule(compile=None, **TINY)
    _set_up(module)
    assert not module.compilation.compiles and module.encoder() is module.model.base_model


def test_fit_with_compile_true_and_no_compiler_is_one_line_and_exit_2(
    no_compiler: None, tiny_args: list[str], capsys: pytest.CaptureFixture
) -> None:
    from mlm_lightning.__main__ import main

    root = Path(tiny_args[tiny_args.index("--trainer.default_root_dir") + 1])
    assert main(["fit", *tiny_args, "--model.compile", "true"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "model.compile=true on a CPU needs a C++ compiler" in errors[0], err
    assert "Traceback" not in err
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]


def test_evaluation_on_a_cpu_needs_no_compiler_and_says_nothing(
    no_compiler: None, caplog: pytest.LogCaptureFixture
) -> None:
    for setting in (True, None):
        module = MLMModule(compile=setting, **TINY)
        with caplog.at_level("INFO"):
            module.compilation.decide("cpu", "validate")  # nothing compiles: no refusal, no line
        assert not [r for r in caplog.records if r.getMessage().startswith("model.compile")]
    with pytest.raises(MLMError, match="needs a C\\+\\+ compiler"):
        MLMModule(compile=True, **TINY).compilation.decide("cpu", "fit")


def test_base_config_stays_uncompiled_for_its_memory() -> None:
    # Compiled, make train's process tree peaked at 1.54 GB (g++ in child processes): over its 1.5 GB target.
    config = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    assert config["model"]["compile"] is False
