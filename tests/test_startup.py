"""Start-up stays fast: importing the package, ``--help`` and ``fill-mask`` do not load what they do not use.

Lightning (with torchmetrics), ``datasets`` and ``transformers`` each take seconds to import; these checks (on
``sys.modules`` of a fresh interpreter, not on timings) keep them out of the paths that do not need them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlm_lightning.__main__ import TOOLS, main

ROOT = Path(__file__).parents[1]
HEAVY = ("lightning", "torchmetrics", "datasets", "transformers", "pyarrow")


def _loaded_after(code: str) -> set[str]:
    """Top-level packages of ``HEAVY`` (and torch) that a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    return set(out.stdout.split()) & {*HEAVY, "torch"}


def test_importing_the_package_loads_no_framework() -> None:
    assert _loaded_after("import mlm_lightning") == set()
    assert _loaded_after("import mlm_lightning.data.masking") == {"torch"}  # what dataloader workers need


def test_public_names_still_import_from_the_package() -> None:
    import mlm_lightning
    from mlm_lightning import MLMCollator, MLMDataModule, MLMModule

    assert MLMDataModule.__module__ == "mlm_lightning.data" and MLMModule.__module__ == "mlm_lightning.model.module"
    assert MLMCollator.__module__ == "mlm_lightning.data.collator" and set(mlm_lightning.__all__) <= set(
        dir(mlm_lightning)
    )
    with pytest.raises(AttributeError):
        mlm_lightning.NoSuchThing  # noqa: B018


def test_top_level_help_lists_every_subcommand_without_lightning(capsys) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "inspect", *TOOLS):
        assert f"\n  {name} " in text, name
    assert _loaded_after("from mlm_lightning.__main__ import main; main(['--help'])") == set()


def test_subcommand_help_still_lists_its_settings(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--data.train_files" in capsys.readouterr().out


@pytest.mark.slow  # a whole run: CI (make test-all) runs it, make test does not
def test_fill_mask_on_an_export_loads_no_lightning_torchmetrics_or_datasets(trained_run: Path) -> None:
    code = (
        "import contextlib, io\n"
        "from mlm_lightning.__main__ import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    assert main(['fill-mask', '--model', {str(trained_run / 'export')!r}, 'the [MASK] of the king.']) == 0\n"
        "assert 'the [MASK] of the king.' in out.getvalue()"
    )
    assert _loaded_after(code) == {"torch", "transformers"}
