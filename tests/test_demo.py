"""``citysense demo`` end to end: the real command, as a user runs it, in a process of its own.

Within 60 s of starting, the API answers with data for every domain -- history from the
backfill, and live readings that went fleet -> CoAP -> gateway -> embedded broker ->
ingestor -> embedded store -- and the dashboard renders with data in headless Chromium (a
screenshot is saved next to the test's files). Ctrl-C (SIGINT to the process group, as a
terminal sends it) then stops everything: exit code 0 and no process left in the group.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from citysense.catalog import DOMAINS
from tests.browser import dump_dom, screenshot
from tests.servers import free_port, wait_until

START_WITHIN = 60.0
STOP_WITHIN = 60.0
LIVE_STORED = re.compile(r"stored ([\d,]+)")


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _rows(answer: object) -> list[dict[str, object]]:
    """The per-device entries of a ``/{domain}/latest`` answer, whatever its wrapping."""
    if isinstance(answer, list):
        return [a for a in answer if isinstance(a, dict)]
    if isinstance(answer, dict):
        for key in ("devices", "districts", "latest", "items", "data", "results"):
            value = answer.get(key)
            if isinstance(value, list):
                return [a for a in value if isinstance(a, dict)]
    return []


def _times_ms(row: dict[str, object]) -> list[int]:
    """Every time in an entry (RFC 3339 or epoch ms), at any depth, as epoch ms."""
    from datetime import datetime

    out: list[int] = []

    def walk(value: object, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and key in ("time", "t", "last_seen", "at"):
            try:
                out.append(int(datetime.fromisoformat(value).timestamp() * 1000))
            except ValueError:
                pass
        elif isinstance(value, int) and key in ("time", "t", "last_seen", "at"):
            out.append(value)

    walk(row)
    return out


def _process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_runs_the_whole_city_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stdout_path = tmp_path / "demo.out"
    stderr_path = tmp_path / "demo.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSENSE_")}
    cmd = [
        sys.executable,
        "-m",
        "citysense",
        "demo",
        "--state-dir",
        str(tmp_path / "state"),
        "--bind",
        f"127.0.0.1:{port}",
        "--devices",
        "150",
        "--time-scale",
        "120",
    ]
    started_ms = int(time.time() * 1000)
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, cwd=tmp_path, env=env, start_new_session=True
        )

    def log_tail() -> str:
        return (
            f"--- stdout\n{stdout_path.read_text(errors='replace')[-3000:]}\n"
            f"--- stderr\n{stderr_path.read_text(errors='replace')[-5000:]}"
        )

    try:
        latest: dict[str, list[dict[str, object]]] = {}

        def every_domain_has_data() -> bool:
            assert proc.poll() is None, f"demo exited with {proc.returncode}\n{log_tail()}"
            for domain in DOMAINS:
                try:
                    rows = _rows(_get(f"{base}/api/v1/{domain}/latest"))
                except (OSError, urllib.error.URLError, ValueError):
                    return False
                if not rows:
                    return False
                latest[domain] = rows
            return True

        try:
            wait_until(every_domain_has_data, START_WITHIN, "API data for every domain", 0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log_tail()}") from exc

        def live_readings_stored() -> bool:
            assert proc.poll() is None, f"demo exited with {proc.returncode}\n{log_tail()}"
            counts = LIVE_STORED.findall(stdout_path.read_text(errors="replace"))
            return bool(counts) and int(counts[-1].replace(",", "")) > 0

        try:
            wait_until(live_readings_stored, START_WITHIN, "live readings stored", 0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log_tail()}") from exc

        # The live path reaches the API too: some reading is newer than the demo's start.
        def live_reading_in_api() -> bool:
            for domain in ("environment", "traffic", "utility"):
                rows = _rows(_get(f"{base}/api/v1/{domain}/latest"))
                if any(t >= started_ms for r in rows for t in _times_ms(r)):
                    return True
            return False

        wait_until(live_reading_in_api, START_WITHIN, "a live reading in the API", 0.5)

        shot = screenshot(f"{base}/", tmp_path / "dashboard.png", tmp_path / "profile-1")
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
        dom = dump_dom(f"{base}/", tmp_path / "profile-2")
        districts = _get(f"{base}/api/v1/districts")
        names = [
            str(d.get("district") or d.get("name"))
            for d in (districts if isinstance(districts, list) else _rows(districts))
            if isinstance(d, dict)
        ]
        assert names, districts
        # Filled in by the page's scripts from the API: the districts it shows.
        assert any(name in dom for name in names), dom[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            code = proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise AssertionError(
                f"demo did not stop within {STOP_WITHIN:.0f} s\n{log_tail()}"
            ) from None
    assert code == 0, log_tail()
    wait_until(lambda: not _process_group_alive(proc.pid), 10, "no process left behind")
    assert "demo stopped" in stdout_path.read_text()


def test_demo_refuses_a_busy_port(tmp_path: Path) -> None:
    """A bad start is a one-line error and exit code 2, with nothing left running."""
    import socket

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
    assert "citysense:" in result.stderr
