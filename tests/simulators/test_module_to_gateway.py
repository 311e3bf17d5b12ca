"""From a simulated module to stored readings, as an operator runs it: ``citysense simulate
module`` prints its pty and its registry rows, a real ``citysense edge`` loads those rows and
reads the module over the pty, and Mosquitto carries the batches to a confirming ingestor."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from citysense.registry import load_registry
from simulators.module import sensor_devices
from simulators.module.core import SENSOR_COUNT
from tests.edge.gateway import Ingestor, ingestor
from tests.servers import MosquittoServer, free_port, free_udp_port, wait_until

GATEWAY = "gw-lab"
SEED = 5


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def module(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The simulated BC66 module (real timings): its pty and its registry file."""
    rows = tmp_path / "registry.csv"
    command = [sys.executable, "-m", "citysense", "simulate", "module", "--dialect", "bc66"]
    command += ["--seed", str(SEED), "--gateway", GATEWAY, "--registry-out", str(rows)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pts = proc.stdout.readline().strip()
        proc.stdout.readline()  # the stable link
        printed = "".join(proc.stdout.readline() for _ in range(1 + 1 + SENSOR_COUNT))
        assert printed == rows.read_text()
        yield pts, rows
    finally:
        _stop(proc)


def _metric(port: int, name: str, code: str | None = None) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    series = f'{name}{{code="{code}"}} ' if code else f"{name} "
    for line in text.splitlines():
        if line.startswith(series):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_module_rows_let_a_real_gateway_accept_its_datagrams_and_radio_figures(
    tmp_path: Path, mosquitto: MosquittoServer, module: tuple[str, Path]
) -> None:
    pts, rows = module
    registry = load_registry(rows)
    module_id = next(d for d in registry if registry[d].site == "module")
    sensors = set(sensor_devices(SEED))
    assert set(registry) == sensors | {module_id}
    metrics_port = free_port()
    command = [sys.executable, "-m", "citysense", "edge", "--gateway", GATEWAY]
    command += ["--registry", str(rows), "--serial", f"{pts}:bc66", "--mqtt", mosquitto.url]
    command += ["--coap", f"127.0.0.1:{free_udp_port()}", "--state-dir", str(tmp_path / "st")]
    command += ["--metrics-bind", f"127.0.0.1:{metrics_port}", "--batch-max-delay", "0.05"]
    with ingestor(mosquitto.url, gateway=GATEWAY) as ing:
        edge = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(
                lambda: _has(ing, {module_id}, "rsrp"), 60, "the module's radio figures stored"
            )
            # the module's scripted sensors send every 10 s
            wait_until(lambda: _has(ing, sensors, "pm25"), 60, "a sensor datagram stored")
            accepted = _metric(metrics_port, "citysense_edge_serial_datagrams_total", "2.04")
            assert accepted is not None and accepted >= 1
            assert _metric(metrics_port, "citysense_edge_serial_datagrams_total", "4.03") in (
                None,
                0,
            )
            # confirmed by the ingestor on .../stored: nothing left in the outbox
            wait_until(
                lambda: _metric(metrics_port, "citysense_edge_outbox_depth") == 0, 30, "stored"
            )
            assert edge.poll() is None
        finally:
            _stop(edge)


def _has(ing: Ingestor, devices: set[str], metric: str) -> bool:
    with ing.lock:
        return any(k[0] in devices and k[1] == metric for k in ing.keys)
