"""An operator sees the broker's state: a gateway whose broker does not answer says so at once,
and its stop says how many readings stay in the outbox. A real gateway process, real UDP; the
broker port has nothing listening."""

from __future__ import annotations

import time
from pathlib import Path

from tests.edge.gateway import (
    GatewayProcess,
    RawCoap,
    coap_port,
    edge_settings,
    outbox_depth,
    uplink_payload,
    write_registry,
)
from tests.servers import wait_until


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
