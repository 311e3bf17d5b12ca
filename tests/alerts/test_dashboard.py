"""The operator API shows alarms from ``citysense alerts`` (``--alerts URL``), fetched server
side with the caller's key: operators see all, viewers district-level ones; the dashboard
page (real headless Chromium) lists them; no alerts service: 404; alerts down: 503."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from citysense.config import Settings
from dashboard_api.app import create_app
from tests.alerts.helpers import AlertsProcess, reading, write_readings
from tests.browser import dump_dom
from tests.dashboard_api.conftest import KEYS, OPERATOR_KEY, VIEWER_KEY, ApiServer
from tests.servers import free_port, wait_until

RULES = """
[[rule]]
name = "pm25-district-high"
kind = "metric"
metric = "pm25"
window = "1m"
group_by = "district"
above = 150.0
severity = "major"

[[rule]]
name = "battery-low"
kind = "battery_low"
below = 20.0
severity = "minor"
"""


def test_api_and_page_show_active_alarms(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    now = int(time.time() * 1000)
    write_readings(state, [reading("aq-east-1", "east", now - 1000, pm25=300.0, battery=5.0)])
    (tmp_path / "rules.toml").write_text(RULES)
    args = ["--rules", str(tmp_path / "rules.toml"), "--state-dir", str(state), "--interval", "0.3"]
    alerts = AlertsProcess(tmp_path, [*args, "--api-keys", ",".join(KEYS)]).start()
    base = Settings(state_dir=str(state), api_keys=KEYS, bind=f"127.0.0.1:{free_port()}")
    apis: list[ApiServer] = []
    try:
        wait_until(
            lambda: len(alerts.get("/api/v1/alarms", OPERATOR_KEY)["alarms"]) == 2, 30, "alarms"
        )
        settings = replace(base, alerts=alerts.base)
        api = ApiServer(settings, create_app(settings))
        api.start()
        apis.append(api)
        with api.client(OPERATOR_KEY) as c:
            r = c.get("/api/v1/alarms")
            assert r.status_code == 200
            got = r.json()["alarms"]
            assert [a["rule"] for a in got] == [
                "pm25-district-high",
                "battery-low",
            ]  # most severe first
        with api.client(VIEWER_KEY) as c:
            assert [a["subject"] for a in c.get("/api/v1/alarms").json()["alarms"]] == [
                {"district": "east"}
            ]
        with api.client(None) as c:
            assert c.get("/api/v1/alarms").status_code == 401

        plain = ApiServer(base, create_app(base))  # no --alerts
        plain.start()
        apis.append(plain)
        with plain.client(OPERATOR_KEY) as c:
            assert c.get("/api/v1/alarms").json() == {"alarms": [], "configured": False}
        alerts.stop()
        with api.client(OPERATOR_KEY) as c:
            r = c.get("/api/v1/alarms")
            assert r.status_code == 503 and r.headers["Retry-After"]

        # the page, with both services open on loopback, in a real browser
        alerts = AlertsProcess(tmp_path, args).start()
        open_settings = replace(
            base, api_keys=(), alerts=alerts.base, bind=f"127.0.0.1:{free_port()}"
        )
        page = ApiServer(open_settings, create_app(open_settings))
        page.start()
        apis.append(page)
        dom = dump_dom(page.url + "/", tmp_path / "profile")
        table = dom[dom.index('id="alarm-table"') :]
        assert "pm25-district-high" in table and "district east" in table and "battery-low" in table
        assert table.index("pm25-district-high") < table.index("battery-low")
    finally:
        alerts.stop()
        for a in apis:
            a.stop()
