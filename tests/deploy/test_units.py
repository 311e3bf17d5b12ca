"""The systemd units: what deploy/systemd/generate.py writes, ``systemd-analyze verify`` clean,
and ``systemd-analyze security`` exposure at most 3.0 for each (figures recorded in
docs/deploy.md)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers import ROOT

UNITS = ROOT / "deploy" / "systemd"
SERVICES = ("edge", "ingest", "api", "alerts")
MAX_EXPOSURE = 3.0

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (make test installs systemd)",
)


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate", UNITS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_unit_files_are_what_the_generator_writes() -> None:
    expected = _generator().units()
    on_disk = {p.name: p.read_text() for p in UNITS.glob("*.service")}
    assert on_disk == expected
    assert set(on_disk) == {f"citysense-{s}{at}.service" for s in SERVICES for at in ("", "@")}


@pytest.mark.parametrize("name", sorted(_generator().units()))
def test_each_unit_has_the_hardening_and_the_notify_protocol(name: str) -> None:
    text = (UNITS / name).read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30s",
        "User=citysense",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "ConfigurationDirectory=citysense",
    ):
        assert f"\n{line}\n" in text, f"{name} lacks {line}"
    assert re.search(r"\nStateDirectory=citysense(/[a-z]+-%i)?\n", text)
    assert re.search(r"\nMemoryMax=\d+[MG]\n", text)
    assert ("SupplementaryGroups=dialout" in text) == name.startswith("citysense-edge")


def _verify_root(tmp_path: Path) -> Path:
    """A root holding this system's unit files, ours, and an executable /usr/bin/citysense
    (a stand-in script: verify only checks that the command exists and is executable)."""
    root = tmp_path / "root"
    system = root / "lib" / "systemd" / "system"
    system.mkdir(parents=True)
    for unit in Path("/lib/systemd/system").iterdir():
        if unit.is_file():
            shutil.copy(unit, system / unit.name)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, system / unit.name)
    citysense = root / "usr" / "bin" / "citysense"
    citysense.parent.mkdir(parents=True)
    citysense.write_text("#!/bin/sh\nexit 0\n")
    citysense.chmod(0o755)
    return root


def _verify(root: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_systemd
def test_systemd_analyze_verify_passes_for_every_unit(tmp_path: Path) -> None:
    root = _verify_root(tmp_path)
    units = [f"citysense-{s}.service" for s in SERVICES]
    units += [f"citysense-{s}@site-1.service" for s in SERVICES]
    result = _verify(root, units)
    ours = [line for line in result.stderr.splitlines() if "citysense" in line]
    assert result.returncode == 0 and not ours, result.stderr
    # the check can fail: a unit with a mistake in it is reported
    broken = root / "lib" / "systemd" / "system" / "citysense-broken.service"
    broken.write_text(
        (UNITS / "citysense-edge.service").read_text().replace("Type=notify", "Type=notifyy")
        + "ExecStartPre=relative/path\n"
    )
    result = _verify(root, ["citysense-broken.service"])
    # (verify exits 0 for what it ignores; its complaints on stderr are what this test reads)
    assert "Failed to parse service type" in result.stderr, result.stderr


def exposure(unit: Path) -> float:
    """``systemd-analyze security`` overall exposure level of a unit file (offline)."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert m, result.stdout + result.stderr
    return float(m.group(1))


@needs_systemd
def test_exposure_level_of_each_unit_is_at_most_3(tmp_path: Path) -> None:
    levels = {unit.name: exposure(unit) for unit in sorted(UNITS.glob("*.service"))}
    print("systemd-analyze security exposure:", levels)
    assert all(level <= MAX_EXPOSURE for level in levels.values()), levels
    # the measure can fail: an unhardened service scores high
    plain = tmp_path / "plain.service"
    plain.write_text("[Service]\nExecStart=/bin/true\n")
    assert exposure(plain) > MAX_EXPOSURE
