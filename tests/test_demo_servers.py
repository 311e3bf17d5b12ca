"""``citysense demo`` with servers of the operator's (``--mqtt``, ``--influx``): what cannot work
is refused at start (exit 2, one line), a missing database is created, and a demo beside a
running ``citysense ingest`` takes no session from it and counts right. Real Mosquitto, real
influxd."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from tests.ingest.gateway_double import ingestor_process
from tests.servers import InfluxServer, MosquittoServer, free_port, stop_process, wait_until
from tests.test_demo import DemoProcess


def test_demo_refuses_a_broker_that_does_not_answer(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "citysense",
            "demo",
            "--mqtt",
            f"mqtt://127.0.0.1:{free_port()}",
            "--state-dir",
            str(tmp_path / "state"),
            "--bind",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("citysense: --mqtt mqtt://127.0.0.1:"), lines
    assert "cannot connect" in lines[0]


def test_demo_creates_a_missing_database(tmp_path: Path, influxd: InfluxServer) -> None:
    name = "demo_" + uuid.uuid4().hex[:10]
    demo = DemoProcess(
        tmp_path,
        "--influx",
        influxd.url,
        "--influx-db",
        name,
        "--devices",
        "20",
        "--backfill-hours",
        "0.2",
    )
    try:
        demo.wait(demo.live_readings_stored, "live readings stored")
        assert influxd.rows(f'SELECT count(*) FROM "{name}".."environment"')
    finally:
        code = demo.ctrl_c()
        influxd.query(f'DROP DATABASE "{name}"', method="POST")
    demo.assert_stopped_cleanly(code)
    assert "history left out" not in demo.stdout.read_text()


def _figure(summary: str, label: str) -> int:
    m = re.search(rf"{label} ([\d,]+)", summary)
    assert m, summary
    return int(m.group(1).replace(",", ""))


def test_demo_beside_a_running_ingestor_takes_no_session_and_counts_right(
    tmp_path: Path, mosquitto: MosquittoServer, influx_db: InfluxServer
) -> None:
    state = tmp_path / "ingest-state"
    ingest = ingestor_process(mosquitto.url, influx_db, state, None)
    ingest_log = state / "ingest.log"
    try:
        wait_until(lambda: "ingestor ready" in ingest_log.read_text(), 60, "the ingestor")
        assert f"as citysense-ingest-{os.uname().nodename} " in ingest_log.read_text()
        demo = DemoProcess(
            tmp_path, "--mqtt", mosquitto.url, "--devices", "30", "--backfill-hours", "0"
        )
        try:
            demo.wait(demo.live_readings_stored, "live readings stored")
        finally:
            code = demo.ctrl_c()
        demo.assert_stopped_cleanly(code)
        summary = demo.stdout.read_text().strip().splitlines()[-1]
        assert _figure(summary, "stored") == _figure(summary, "readings at the gateway"), summary
        broker_log = mosquitto.log_tail(200_000)
        assert "already connected" not in broker_log, broker_log[-3000:]
        assert "ERROR" not in ingest_log.read_text()
        assert stop_process(ingest) == 0
    finally:
        stop_process(ingest)
