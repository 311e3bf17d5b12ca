"""An operator sees the broker's state: a gateway whose broker does not answer says so at once,
and its stop says how many readings stay in the outbox. A real gateway process, real UDP; the
broker port has nothing listening."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.edge.gateway import (
    GatewayProcess,
    RawCoap,
    coap_port,
    edge_settings,
    metrics_text,
    outbox_depth,
    uplink_payload,
    write_registry,
)
from tests.servers import ROOT, wait_until


def test_broker_down_is_a_warning_and_the_stop_tells_what_stays(tmp_path: Path) -> None:
    devices = write_registry(tmp_path / "registry.csv", 2)
    settings = edge_settings(tmp_path)  # a free port: nothing listens on it
    broker = settings.mqtt.removeprefix("mqtt://") if settings.mqtt else ""
    log_path = tmp_path / "gateway.log"
    gateway = GatewayProcess(settings, log_path)
    client = RawCoap(coap_port(settings))
    try:
        started = time.monotonic()
        gateway.start()
        wait_until(
            lambda: (
                f"WARNING edge.uplink: cannot reach the broker at {broker}" in log_path.read_text()
            ),
            15,
            "a WARNING naming the broker",
        )
        assert time.monotonic() - started < 15
        line = next(x for x in log_path.read_text().splitlines() if "cannot reach" in x)
        assert "refused" in line.lower(), line  # the reason, from the socket
        answers = client.send_all([uplink_payload(devices[0], int(time.time() * 1000) - 1000)])
        assert set(answers.values()) == {"2.04"}
        assert gateway.terminate() == 0
        text = log_path.read_text()
        assert "every published batch is confirmed" not in text
        assert "stopping: 1 reading (the oldest" in text, text[-2000:]
        assert "stay in the outbox for the next start" in text
        assert outbox_depth(settings) == 1
    finally:
        client.close()
        gateway.close()


def test_a_second_gateway_on_the_same_coap_port_exits_2(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_registry(tmp_path / name / "registry.csv", 2)
    first = GatewayProcess(edge_settings(tmp_path / "a"), tmp_path / "a.log")
    second_settings = edge_settings(tmp_path / "b", coap=first.settings.coap)
    try:
        first.start()
        result = subprocess.run(
            GatewayProcess(second_settings, tmp_path / "b.log").args(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()
        assert last == [
            f"citysense: --coap {first.settings.coap}: Address already in use "
            "(another process serves it)"
        ], last
        # the first one still serves
        assert first.proc is not None and first.proc.poll() is None
    finally:
        first.close()


def test_the_gateways_coap_socket_admits_no_later_reuseport_bind(tmp_path: Path) -> None:
    """Even a socket asking for SO_REUSEPORT (as aiocoap's own bind does) cannot join."""
    write_registry(tmp_path / "registry.csv", 2)
    gateway = GatewayProcess(edge_settings(tmp_path), tmp_path / "gw.log")
    try:
        gateway.start()
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            with pytest.raises(OSError):
                other.bind(("::ffff:127.0.0.1", coap_port(gateway.settings)))
    finally:
        gateway.close()


def test_known_counters_at_0_and_the_quota_as_given(tmp_path: Path) -> None:
    write_registry(tmp_path / "registry.csv", 2)
    settings = edge_settings(tmp_path, outbox_quota_mb=0.06)
    gateway = GatewayProcess(settings, tmp_path / "gw.log")
    try:
        gateway.start()
        text = metrics_text(settings)
        for line in (
            "citysense_edge_batches_sent_total 0",
            "citysense_edge_readings_accepted_total 0",
            'citysense_edge_uplinks_total{code="2.04"} 0',
            'citysense_edge_rejected_total{reason="unknown_device"} 0',
        ):
            assert line in text.splitlines(), line
        assert "policy refuse, 0.06 MiB" in (tmp_path / "gw.log").read_text()
    finally:
        gateway.close()
