"""Every deliberate defect of ``make mutants`` still applies to the code as it is.

``make mutants`` runs outside ``make test`` (it takes a while); this keeps its patches from
rotting silently: a change that moves the code a mutant patches must move the mutant too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.mutants.run import HERE, load

PATCHES = sorted(HERE.glob("*.patch"))
ROOT = HERE.parent.parent


def test_there_are_mutants() -> None:
    assert len(PATCHES) >= 8


@pytest.mark.parametrize("patch", PATCHES, ids=[p.stem for p in PATCHES])
def test_the_mutant_applies_and_names_its_tests(patch: Path) -> None:
    mutant = load(patch)
    assert mutant.defect and mutant.tests, f"{patch.name}: header lacks defect or tests"
    for node in mutant.tests:
        assert (ROOT / node.split("::")[0]).exists(), f"{patch.name}: no test file for {node}"
    check = subprocess.run(
        ["git", "apply", "--check", str(patch)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, f"{patch.name} no longer applies:\n{check.stderr}"
