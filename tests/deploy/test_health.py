"""GET /health on the gateway's and the ingestor's metrics address: 200 with what the service
waits on; 503 once the broker or the store has been unreachable longer than
--unhealthy-after. Real Mosquitto, stopped to make the broker unreachable; an InfluxDB address
where nothing listens for an unreachable store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.edge.gateway import GatewayThread, edge_settings
from tests.servers import ROOT, MosquittoServer, free_port, wait_until


def health(bind: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{bind}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def waiting_on(body: dict[str, Any]) -> list[str]:
    return [w["what"] for w in body["waiting_on"]]


def test_gateway_health_follows_the_broker(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    settings = edge_settings(tmp_path, mqtt_url=mosquitto.url, unhealthy_after=2)
    bind = settings.metrics_bind
    assert bind is not None
    with GatewayThread(settings):
        wait_until(lambda: health(bind) == (200, {"status": "ok", "waiting_on": [],
                                                 "unhealthy_after": 2.0}), 30, "healthy")  # fmt: skip
        mosquitto.stop()
        wait_until(lambda: waiting_on(health(bind)[1]) == ["broker"], 10, "waiting on broker")
        code, body = health(bind)
        assert code == 200 and body["status"] == "waiting"  # not yet longer than 2 s
        wait_until(lambda: health(bind)[0] == 503, 10, "503")
        code, body = health(bind)
        assert body["status"] == "unhealthy" and body["waiting_on"][0]["seconds"] >= 2
        mosquitto.start()
        wait_until(lambda: health(bind)[0] == 200, 30, "healthy again")


def _ingest(tmp_path: Path, bind: str, *extra: str) -> subprocess.Popen[bytes]:
    with open(tmp_path / "ingest.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "citysense",
                "ingest",
                "--metrics-bind",
                bind,
                "--unhealthy-after",
                "1.5",
                "--state-dir",
                str(tmp_path / "state"),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )


def test_ingest_health_follows_the_store_and_the_broker(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    bind = f"127.0.0.1:{free_port()}"
    # an InfluxDB where nothing listens: the ingestor waits for its store
    proc = _ingest(
        tmp_path, bind, "--mqtt", mosquitto.url, "--influx", f"http://127.0.0.1:{free_port()}"
    )
    try:
        wait_until(lambda: _answers(bind), 30, "/health")
        assert "store" in waiting_on(health(bind)[1])
        wait_until(lambda: health(bind)[0] == 503, 10, "503 for the store")
        assert "store" in waiting_on(health(bind)[1])
    finally:
        proc.terminate()
        proc.wait(30)
    # the embedded store: healthy once subscribed; 503 when the broker has gone too long
    bind = f"127.0.0.1:{free_port()}"
    proc = _ingest(tmp_path, bind, "--mqtt", mosquitto.url)
    try:
        wait_until(lambda: _answers(bind) and health(bind)[0] == 200 and
                   health(bind)[1]["status"] == "ok", 30, "healthy")  # fmt: skip
        mosquitto.stop()
        wait_until(lambda: health(bind)[0] == 503, 15, "503 for the broker")
        assert waiting_on(health(bind)[1]) == ["broker"]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def _answers(bind: str) -> bool:
    try:
        health(bind)
    except OSError:
        return False
    return True
