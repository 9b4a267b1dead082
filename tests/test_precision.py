"""trainer.precision left unset: bf16-mixed where the hardware computes bf16 natively, else 32-true."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from mlm_lightning.cli.lightning_cli import run_cli
from mlm_lightning.training import precision
from tests.helpers import assert_one_line

AMD_EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\nbogomips\t: 4800\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
OLDER_X86 = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"


def test_cpu_bf16_flags_read_from_cpuinfo() -> None:
    assert precision.cpu_bf16_flags(AMD_EPYC) == ["avx512_bf16"]
    assert precision.cpu_bf16_flags(SAPPHIRE_RAPIDS) == ["avx512_bf16", "amx_bf16"]
    assert precision.cpu_bf16_flags(OLDER_X86) == []
    assert precision.cpu_bf16_flags("processor : 0\n") == []  # no flags line (e.g. another architecture)


@pytest.mark.parametrize(
    ("cpuinfo", "accelerator", "expected"),
    [
        (AMD_EPYC, "auto", "bf16-mixed"),
        (AMD_EPYC, "cpu", "bf16-mixed"),
        (OLDER_X86, "auto", "32-true"),  # emulated bf16 is slower than fp32: never a blind default
        (AMD_EPYC, "mps", "32-true"),
    ],
)
def test_default_precision_on_a_cpu(
    cpuinfo: str, accelerator: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: precision.BF16_CPU_FLAGS[:1] if "bf16" in cpuinfo else [])
    value, why = precision.default_precision(accelerator)
    assert value == expected and why


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_default_precision_on_a_gpu(bf16: bool, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: list(precision.BF16_CPU_FLAGS))  # not asked on a GPU
    assert precision.default_precision("auto")[0] == expected
    assert precision.default_precision("gpu")[0] == expected


@pytest.mark.parametrize("flags", [["avx512_bf16"], []])
def test_unset_precision_follows_the_hardware_and_is_recorded(
    flags: list[str], tiny_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    cli = run_cli([*tiny_args, "--trainer.precision", "null", "--trainer.accelerator", "cpu"], run=False)
    expected = "bf16-mixed" if flags else "32-true"
    assert cli.trainer.precision == expected
    assert cli.config.trainer.precision == expected  # what config.yaml records, so the run can be repeated


def test_a_set_precision_is_kept(tiny_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    cli = run_cli([*tiny_args, "--trainer.accelerator", "cpu"], run=False)  # tiny.yaml: 32-true
    assert cli.trainer.precision == "32-true"


def test_base_config_leaves_precision_to_the_hardware() -> None:
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "base.yaml").read_text())
    assert config["trainer"]["precision"] is None


def test_the_choice_is_said_once_when_a_run_is_built_not_when_a_tool_reads_the_config(
    tiny_args: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlm_lightning.cli.config import parse_config

    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    args = [*tiny_args, "--trainer.precision", "null", "--trainer.accelerator", "cpu"]
    with caplog.at_level("INFO"):
        assert parse_config(args).trainer.precision == "bf16-mixed"  # evaluate and inspect see the same value
        assert "trainer.precision" not in caplog.text
        run_cli(args, run=False)
    notes = [r.getMessage() for r in caplog.records if "trainer.precision" in r.getMessage()]
    assert_one_line(notes, "bf16-mixed", "avx512_bf16", prefix="trainer.precision: ")
