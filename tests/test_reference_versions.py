"""The libraries that tests compare prefkit with are pinned exactly, and installed at the pin.

A comparison passes or fails for the version it ran against: TRL's trainers and the
private helpers the parity tests call change between releases, and the README quotes
parity with TRL 1.16. So the test extra pins each reference library with ``==``, and
this checks that the environment holds that version: another one fails here, by name,
instead of changing what the comparisons mean. A missing library skips (fails under
``CI=true``), as the comparisons themselves do.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import skip_or_fail_in_ci

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

REFERENCE_LIBRARIES = ("trl", "scipy", "krippendorff")
"""TRL (loss and trainer parity), scipy (rank correlations), krippendorff (agreement)."""


def pinned_in_test_extra() -> dict[str, str]:
    """Name -> exact version, for every ``==`` pin of the test extra."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    pins = {}
    for line in extras["test"]:
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        if len(specifiers) == 1 and specifiers[0].operator == "==":
            pins[requirement.name] = specifiers[0].version
    return pins


def test_every_reference_library_is_pinned_exactly() -> None:
    pins = pinned_in_test_extra()
    unpinned = [name for name in REFERENCE_LIBRARIES if name not in pins]
    assert not unpinned, f"pin these in the test extra of {PYPROJECT} with ==: {unpinned}"


@pytest.mark.parametrize("name", REFERENCE_LIBRARIES)
def test_reference_library_is_installed_at_its_pin(name: str) -> None:
    pinned = pinned_in_test_extra().get(name)
    assert pinned, f"{name} has no == pin in the test extra of {PYPROJECT}"
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        skip_or_fail_in_ci(f"{name} is not installed (the test extra pins {name}=={pinned})")
    assert installed == pinned, (
        f"{name} {installed} is installed, but the tests compare with {name}=={pinned}; "
        "pip install -e '.[test]' installs the pinned version"
    )
