"""``citysense demo`` end to end: the real command, as a user runs it, in a process of its own.

Within 60 s of starting, the API answers with data for every domain -- history from the
backfill, and live readings that went fleet -> CoAP -> gateway -> broker -> ingestor ->
store -- and the dashboard renders with data in headless Chromium (a screenshot is saved
next to the test's files). Ctrl-C (SIGINT to the process group, as a terminal sends it) then
stops everything: exit code 0 and no process left in the group. The screenshot is also
copied to tests/artifacts/demo-dashboard.png. The same runs with real
Mosquitto and influxd in place of the embedded broker and store (``--mqtt``/``--influx``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from citysense.catalog import DOMAINS
from tests.browser import dump_dom, screenshot
from tests.servers import ROOT, InfluxServer, MosquittoServer, free_port, wait_until

START_WITHIN = 60.0
STOP_WITHIN = 60.0
LIVE_STORED = re.compile(r"stored ([\d,]+)")
TIME_KEYS = ("time", "t", "last_seen", "at")
ARTIFACTS = ROOT / "tests" / "artifacts"


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _rows(answer: object) -> list[dict[str, object]]:
    """The entries of an API answer (a list, or the list under its one collection key)."""
    if isinstance(answer, list):
        return [a for a in answer if isinstance(a, dict)]
    if isinstance(answer, dict):
        for key in ("devices", "districts", "latest", "items", "data", "results"):
            value = answer.get(key)
            if isinstance(value, list):
                return [a for a in value if isinstance(a, dict)]
    return []


def _times_ms(row: object, key: str = "") -> list[int]:
    """Every time in an entry (RFC 3339 or epoch ms), at any depth, as epoch ms."""
    if isinstance(row, dict):
        return [t for k, v in row.items() for t in _times_ms(v, k)]
    if isinstance(row, list):
        return [t for v in row for t in _times_ms(v, key)]
    if key in TIME_KEYS and isinstance(row, str):
        try:
            return [int(datetime.fromisoformat(row).timestamp() * 1000)]
        except ValueError:
            return []
    if key in TIME_KEYS and isinstance(row, int):
        return [row]
    return []


def _table_rows(dom: str, table_id: str) -> list[list[str]]:
    """The cell texts of each body row of the table with id ``table_id``."""
    m = re.search(rf'<table[^>]*id="{table_id}".*?<tbody>(.*?)</tbody>', dom, re.S)
    if m is None:
        return []
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", m.group(1), re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in row] for row in cells]


def _dashboard_content(dom: str) -> dict[str, object]:
    """What the dashboard shows, from its DOM after its scripts ran."""
    status = re.search(r'id="status"[^>]*>([^<]*)<', dom)
    chart = re.search(r'<svg[^>]*id="chart".*?</svg>', dom, re.S)
    series = re.findall(r'<path[^>]*class="series"[^>]*>', chart.group(0)) if chart else []
    return {
        "loaded": re.search(r'<body[^>]*data-loaded="1"', dom) is not None,
        "status": status.group(1) if status else "",
        "aqi_districts": [row[0] for row in _table_rows(dom, "aqi-table") if row],
        "chart_points": max(
            (len(re.findall(r"[ML]", d)) for p in series for d in re.findall(r' d="([^"]*)"', p)),
            default=0,
        ),
        "device_status": {row[0] for row in _table_rows(dom, "device-table") if row},
    }


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class DemoProcess:
    """``python -m citysense demo ...`` in a session (process group) of its own."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stdout = tmp_path / "demo.out"
        self.stderr = tmp_path / "demo.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSENSE_")}
        cmd = [
            sys.executable,
            "-m",
            "citysense",
            "demo",
            "--state-dir",
            str(tmp_path / "state"),
            "--bind",
            f"127.0.0.1:{self.port}",
            *args,
        ]
        self.started_ms = int(time.time() * 1000)
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, cwd=tmp_path, env=env, start_new_session=True
            )

    def log_tail(self) -> str:
        return (
            f"--- stdout\n{self.stdout.read_text(errors='replace')[-3000:]}\n"
            f"--- stderr\n{self.stderr.read_text(errors='replace')[-5000:]}"
        )

    def _alive(self) -> None:
        assert self.proc.poll() is None, (
            f"demo exited with {self.proc.returncode}\n{self.log_tail()}"
        )

    def wait(self, predicate, what: str) -> None:  # type: ignore[no-untyped-def]
        last_error: list[str] = []

        def check() -> bool:
            self._alive()
            try:
                return bool(predicate())
            except (OSError, ValueError) as exc:  # not up yet, or a failed request: retried
                last_error[:] = [repr(exc)]
                return False

        try:
            wait_until(check, START_WITHIN, what, 0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc} (last error: {last_error})\n{self.log_tail()}") from exc

    def every_domain_has_data(self) -> bool:
        return all(_rows(_get(f"{self.base}/api/v1/{d}/latest")) for d in DOMAINS)

    def live_readings_stored(self) -> bool:
        """The status line's count of readings the ingestor stored is above zero."""
        counts = LIVE_STORED.findall(self.stdout.read_text(errors="replace"))
        return bool(counts) and int(counts[-1].replace(",", "")) > 0

    def live_reading_in_api(self) -> bool:
        """Some reading the API returns is newer than the demo's start (not history)."""
        for domain in ("environment", "traffic", "utility"):
            rows = _rows(_get(f"{self.base}/api/v1/{domain}/latest"))
            if any(t >= self.started_ms for r in rows for t in _times_ms(r)):
                return True
        return False

    def ctrl_c(self) -> int:
        """SIGINT to the group, as a terminal sends it; the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(
                f"demo did not stop within {STOP_WITHIN:.0f} s\n{self.log_tail()}"
            ) from None

    def assert_stopped_cleanly(self, code: int) -> None:
        assert code == 0, self.log_tail()
        wait_until(lambda: not _group_alive(self.proc.pid), 10, "no process left behind")
        assert "demo stopped" in self.stdout.read_text(), self.log_tail()
        with socket.socket() as s:  # nothing listens on the API's port any more
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))


def test_demo_runs_the_whole_city_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path, "--devices", "150", "--time-scale", "120")
    try:
        demo.wait(demo.every_domain_has_data, "API data for every domain")
        demo.wait(demo.live_readings_stored, "live readings stored")
        demo.wait(demo.live_reading_in_api, "a live reading in the API")

        shot = screenshot(f"{demo.base}/", tmp_path / "dashboard.png", tmp_path / "profile-1")
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(shot, ARTIFACTS / "demo-dashboard.png")
        dom = dump_dom(f"{demo.base}/", tmp_path / "profile-2")
        (tmp_path / "dashboard.html").write_text(dom)
        page = _dashboard_content(dom)
        names = {str(d.get("district")) for d in _rows(_get(f"{demo.base}/api/v1/districts"))}
        # Filled in by the page's scripts from the API.
        assert page["loaded"] and page["status"].startswith("updated"), page
        assert set(page["aqi_districts"]) == names, page
        assert page["chart_points"] > 20, page
        assert "online" in page["device_status"], page
        # the demo runs citysense alerts with the default rules; the page shows its panel
        alarms = _get(f"{demo.base}/api/v1/alarms")
        assert isinstance(alarms["alarms"], list), alarms
        assert '<section class="card wide" id="alarm-card">' in dom, "the alarm panel is hidden"
        assert_broker_refuses_strangers(demo.stdout.read_text())
    finally:
        code = demo.ctrl_c()
    demo.assert_stopped_cleanly(code)


def assert_broker_refuses_strangers(out: str) -> None:
    """The demo's embedded broker holds the deployment's model: no anonymous client, and no
    guessed password, gets in (each service has a user of its own made for the run)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    match = re.search(r"embedded broker on mqtt://127\.0\.0\.1:(\d+)", out)
    assert match, out[-2000:]
    for user in (None, "ingest", "gw-01"):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if user is not None:
            client.username_pw_set(user, "guessed")
        codes: list[object] = []
        client.on_connect = lambda c, u, f, rc, p, codes=codes: codes.append(rc)
        client.connect("127.0.0.1", int(match.group(1)))
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            client.loop(0.2)
        client.disconnect()
        assert codes and getattr(codes[0], "is_failure", False), (user, codes)


def test_demo_with_real_mosquitto_and_influxd(
    tmp_path: Path, mosquitto: MosquittoServer, influx_db: InfluxServer
) -> None:
    demo = DemoProcess(
        tmp_path,
        "--mqtt",
        mosquitto.url,
        "--influx",
        influx_db.url,
        "--influx-db",
        influx_db.db,
        "--devices",
        "60",
        "--time-scale",
        "120",
        "--backfill-hours",
        "2",
    )
    try:
        demo.wait(demo.every_domain_has_data, "API data for every domain")
        demo.wait(demo.live_readings_stored, "live readings stored")
        demo.wait(demo.live_reading_in_api, "a live reading in the API")
        out = demo.stdout.read_text()
        assert "embedded broker" not in out and mosquitto.url in out
        # The points are in the real influxd, read back independently.
        recent = influx_db.rows(
            f"SELECT count(*) FROM environment WHERE time >= {demo.started_ms}ms"
        )
        assert recent, "no live environment points in influxd"
    finally:
        code = demo.ctrl_c()
    demo.assert_stopped_cleanly(code)


def test_demo_refuses_a_busy_port(tmp_path: Path) -> None:
    """A bad start is a one-line error and exit code 2, with nothing left running."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "citysense",
                "demo",
                "--state-dir",
                str(tmp_path / "state"),
                "--bind",
                f"127.0.0.1:{port}",
                "--devices",
                "10",
                "--backfill-hours",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            start_new_session=True,
            check=False,
        )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"citysense: --bind 127.0.0.1:{port}" in result.stderr


def test_status_figures_come_from_prometheus_text() -> None:
    from citysense.cli.demo import parse_prometheus

    text = (
        "# HELP citysense_ingest_readings_written_total readings stored\n"
        "# TYPE citysense_ingest_readings_written_total counter\n"
        "citysense_ingest_readings_written_total 42\n"
        'citysense_edge_uplinks_total{code="2.04"} 7\n'
        'citysense_edge_uplinks_total{code="4.00"} 2\n'
        "garbage line\n"
    )
    assert parse_prometheus(text) == {
        "citysense_ingest_readings_written_total": 42.0,
        "citysense_edge_uplinks_total": 9.0,
    }
