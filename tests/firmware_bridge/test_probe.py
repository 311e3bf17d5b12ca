"""``citysense edge probe`` against simulated modules on real ptys."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from citysense.config import Settings
from edge.probe import probe, probe_module
from simulators.module import SimulatedModule
from tests.firmware_bridge.test_driver_pty import FAST


@pytest.mark.parametrize("dialect", ["bc95", "sim7020", "bc66"])
def test_probe_prints_identity_and_radio(dialect: str) -> None:
    import asyncio

    with SimulatedModule(dialect, seed=3, speed=50) as sim:
        out = io.StringIO()
        asyncio.run(probe_module(sim.device, dialect, timings=FAST, out=out))
    text = out.getvalue()
    fields = dict(line.split(None, 1) for line in text.splitlines())
    assert fields["imei"] == sim.imei
    assert fields["iccid"] == sim.iccid
    assert fields["registration"].startswith("1 (registered")
    assert fields["rsrp"].endswith("dBm")
    assert -125 <= float(fields["rsrp"].split()[0]) <= -65
    assert fields["ecl"] in ("0", "1", "2")
    assert fields["pci"] != "-"


def test_probe_of_a_missing_port_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    settings = replace(Settings(), serial_device="/nonexistent/ttyNB", dialect="bc95")
    assert probe(settings) == 1
    assert "probe of /nonexistent/ttyNB failed" in capsys.readouterr().err


def test_citysense_edge_probe_command() -> None:
    with SimulatedModule("bc66", seed=4, speed=20) as sim:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "citysense",
                "edge",
                "probe",
                "--serial",
                sim.device,
                "--dialect",
                "bc66",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "CITYSENSE_LOG_LEVEL": "WARNING"},
        )
    assert result.returncode == 0, result.stderr
    assert sim.imei in result.stdout
    assert "rsrp" in result.stdout
