"""A password revoked after a successful start: the gateway logs it and retries with back-off
(no crash loop), keeps its outbox, and carries on once its credentials are valid again."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from provision.broker import hash_password
from tests.edge.gateway import write_registry
from tests.provision.test_refusals import READINGS, fill_outbox, outbox_rows
from tests.servers import ROOT, ProvisionedMosquitto, free_udp_port, wait_until


def test_revoked_password_is_retried_not_fatal(
    tmp_path: Path, secure_broker: ProvisionedMosquitto, broker_dir: Path
) -> None:
    state = tmp_path / "state"
    fill_outbox(state)
    write_registry(tmp_path / "registry.csv", 2, gateway="gw-01")
    log = tmp_path / "edge.log"
    args = [
        "edge", "--gateway", "gw-01", "--registry", str(tmp_path / "registry.csv"),
        "--coap", f"127.0.0.1:{free_udp_port()}", "--metrics-bind", "off",
        "--state-dir", str(state), "--retry-max-delay", "2",
        "--mqtt", f"mqtts://127.0.0.1:{secure_broker.port}",
        "--mqtt-ca", str(broker_dir / "ca.crt"), "--mqtt-username", "gw-01",
        "--mqtt-password-file", str(broker_dir / "clients" / "gw-01.password"),
    ]  # fmt: skip
    passwd = broker_dir / "passwd"
    original = passwd.read_text()
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "citysense", *args], stderr=err, cwd=ROOT)
    try:
        wait_until(lambda: b"connected to mqtts://" in log.read_bytes(), 30, "the first connection")
        # revoke: gw-01 gets another password; the broker restarts with it
        lines = [
            f"gw-01:{hash_password('rotated-elsewhere')}" if line.startswith("gw-01:") else line
            for line in original.splitlines()
        ]
        passwd.write_text("\n".join(lines) + "\n")
        secure_broker.restart()
        wait_until(lambda: log.read_bytes().count(b"refused us") >= 2, 30, "refusals, retried")
        assert proc.poll() is None, "the gateway must keep running"
        assert outbox_rows(state) == READINGS
        # the right password again: it reconnects by itself
        passwd.write_text(original)
        secure_broker.restart()
        wait_until(
            lambda: log.read_bytes().count(b"connected to mqtts://") >= 2, 30, "a reconnection"
        )
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "retrying with back-off" in text
    refusals = text.count("refused us")
    assert refusals < 30, f"{refusals} refusals: not backing off"
