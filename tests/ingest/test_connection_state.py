"""An ingestor whose broker does not answer says so at once (WARNING, address and reason) and
still stops cleanly. A real ingestor process; nothing listens on the broker port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.servers import ROOT, MosquittoServer, free_port, stop_process, wait_until


def test_broker_down_is_a_warning_within_15_s(tmp_path: Path) -> None:
    port = free_port()
    metrics_port = free_port()
    log_path = tmp_path / "ingest.log"
    args = [
        sys.executable,
        "-m",
        "citysense",
        "ingest",
        "--mqtt",
        f"mqtt://127.0.0.1:{port}",
        "--state-dir",
        str(tmp_path / "state"),
        "--metrics-bind",
        f"127.0.0.1:{metrics_port}",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ)
        )
    try:
        started = time.monotonic()
        wait_until(
            lambda: (
                f"WARNING ingest.service: cannot reach the broker at 127.0.0.1:{port}"
                in log_path.read_text()
            ),
            15,
            "a WARNING naming the broker",
        )
        assert time.monotonic() - started < 15
        assert "refused" in log_path.read_text().lower()
        # known series exist from the start, at 0
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            lines = r.read().decode().splitlines()
        assert 'citysense_ingest_dead_letters_total{reason="malformed"} 0' in lines
        assert "citysense_ingest_readings_written_total 0" in lines
        assert stop_process(proc) == 0
    finally:
        stop_process(proc)


def test_two_ingestors_with_one_instance_name_report_the_clash(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """Two ``citysense ingest --instance same``: the broker hands the session back and forth;
    an ERROR names the client id (no silent takeover loop)."""
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    try:
        for i, log_path in enumerate(logs):
            with open(log_path, "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "citysense",
                            "ingest",
                            "--mqtt",
                            mosquitto.url,
                            "--instance",
                            "same",
                            "--state-dir",
                            str(tmp_path / f"state{i}"),
                            "--metrics-bind",
                            "off",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                    )
                )
        wait_until(
            lambda: any(
                "ERROR" in p.read_text() and "'citysense-ingest-same' is in use" in p.read_text()
                for p in logs
            ),
            30,
            "an ERROR naming the clashing client id",
        )
    finally:
        for proc in procs:
            stop_process(proc)
