"""Project habits that are files, not code: the lowest-version pins CI tests with, and pytest's own settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check needs to run on one version only


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lower_bounds() -> dict[str, Version]:
    """Each dependency's declared lower bound (``>=X``), the dev extra's too, by package name."""
    project = _pyproject()["project"]
    bounds = {}
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                bounds[requirement.name] = Version(spec.version)
    return bounds


def test_lowest_versions_are_the_declared_lower_bounds() -> None:
    """`make test-min` tests what pyproject.toml promises: every pin of a declared package is its lower bound."""
    pins = {}
    for line in (ROOT / "scripts" / "lowest-versions.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name] = Version(version)
    bounds = _lower_bounds()
    assert {"lightning", "transformers"} <= pins.keys()
    declared = {name: version for name, version in pins.items() if name in bounds}
    assert {name: bounds[name] for name in declared} == declared


def test_pytest_refuses_unknown_markers_and_hides_no_whole_warning_class() -> None:
    """A typo in a marker fails collection; each warning filter names what it hides."""
    options = _pyproject()["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options["addopts"].split()
    for entry in options.get("filterwarnings", []):
        action, _, rest = entry.partition(":")
        if action == "ignore":
            message, category, module = (rest.split(":") + ["", "", ""])[:3]
            assert message or module, f"{entry!r} hides a whole warning class: name a message or a module"
