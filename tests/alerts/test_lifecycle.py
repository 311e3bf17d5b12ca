"""``citysense alerts`` as a process over the embedded store, with a webhook receiver run by the
test: raise (one district only, HMAC verified), acknowledge over HTTP with roles, clear,
history; a device that stops sending; a bad receiver beside a good one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from alerts.store import AlarmStore
from tests.alerts.helpers import (
    SECRET,
    AlertsProcess,
    Receiver,
    alerts_args,
    reading,
    write_readings,
)
from tests.servers import wait_until

OPERATOR = "operator-key-0123456789"
VIEWER = "viewer-key-0123456789"

RULES = """
[[rule]]
name = "pm25-high"
kind = "metric"
metric = "pm25"
agg = "mean"
window = "2m"
group_by = "district"
above = 150.0
clear = 120.0
for = "1s"
clear_for = "1s"
severity = "major"

[[rule]]
name = "station-silent"
kind = "device_offline"
intervals = 0.02      # 0.02 x the station's report interval without a reading
severity = "minor"
device_kind = "air_station"
"""


def _now() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    state = tmp_path / "state"
    state.mkdir()
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    return state, rules, secret


def test_raise_ack_clear_through_a_webhook(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    state, rules, secret = setup
    receiver = Receiver().start()
    bad = Receiver(port=None)
    bad.status = 500  # a broken receiver beside the good one: it must not hold anything up
    bad.start()
    now = _now()
    write_readings(
        state,
        [
            reading(f"aq-{d}-{i}", d, now - k * 10_000, pm25=v, battery=90.0)
            for d, v in (("east", 200.0), ("west", 40.0))
            for i in range(3)
            for k in range(3)
        ],
    )
    alerts = AlertsProcess(
        tmp_path,
        alerts_args(
            rules,
            state,
            receiver.url,
            bad.url,
            secret=secret,
            api_keys=f"{OPERATOR}:operator,{VIEWER}:viewer",
            retry_max_delay=2,
        ),
    ).start()
    try:
        wait_until(lambda: receiver.events("raised", "pm25-high"), 30, "the pm25 alarm")
        time.sleep(1.5)
        raised = receiver.events("raised", "pm25-high")
        assert len(raised) == 1, raised
        alarm = raised[0]["alarm"]
        assert alarm["subject"] == {"district": "east"}  # and not west
        assert alarm["state"] == "raised" and alarm["value"] == pytest.approx(200.0)
        assert receiver.bad_signatures == 0 and all(r["signed"] for r in receiver.requests)

        # the API: viewers read, only operators acknowledge
        listed = alerts.get("/api/v1/alarms?state=raised&district=east", VIEWER)["alarms"]
        assert [a["id"] for a in listed] == [alarm["id"]]
        assert alerts.get("/api/v1/alarms?district=west", VIEWER)["alarms"] == []
        status, _ = alerts.post(f"/api/v1/alarms/{alarm['id']}/ack", {"comment": "x"}, VIEWER)
        assert status == 403
        status, _ = alerts.post(f"/api/v1/alarms/{alarm['id']}/ack", {"comment": "x"})
        assert status == 401
        status, acked = alerts.post(
            f"/api/v1/alarms/{alarm['id']}/ack",
            {"comment": "crew sent", "by": "duty officer"},
            OPERATOR,
        )
        assert status == 200 and acked["state"] == "acknowledged"
        assert (
            acked["acknowledged_by"].startswith("duty officer") and acked["comment"] == "crew sent"
        )
        status, _ = alerts.post(f"/api/v1/alarms/{alarm['id']}/ack", {}, OPERATOR)
        assert status == 409
        wait_until(lambda: receiver.events("acknowledged"), 20, "the acknowledged event")

        # the episode ends: below the clear line for the clear time
        later = _now()
        write_readings(
            state,
            [
                reading(f"aq-east-{i}", "east", later - k * 1000, pm25=10.0)
                for i in range(3)
                for k in range(1, 120, 5)
            ],
        )
        wait_until(lambda: receiver.events("cleared"), 30, "the cleared event")
        one = alerts.get(f"/api/v1/alarms/{alarm['id']}", VIEWER)
        assert one["state"] == "cleared"
        assert [e["event"] for e in one["events"]] == ["raised", "acknowledged", "cleared"]
        assert [e["event_id"] for e in one["events"]] == [
            b["event_id"] for b in receiver.accepted() if b["alarm"]["id"] == alarm["id"]
        ][:3]

        # the stations stop sending: device_offline for each of them
        wait_until(
            lambda: len(receiver.events("raised", "station-silent")) >= 6, 90, "device_offline"
        )
        subjects = {
            e["alarm"]["subject"]["device"] for e in receiver.events("raised", "station-silent")
        }
        assert subjects == {f"aq-{d}-{i}" for d in ("east", "west") for i in range(3)}

        # the broken receiver got attempts, none taken; /metrics tells the backlog
        assert bad.requests and not bad.accepted()
        metrics = alerts.get_text("/metrics", OPERATOR)
        assert 'citysense_alerts_alarms{state="cleared"} 1' in metrics
        assert "citysense_alerts_rules_evaluated_total" in metrics
        pending = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith("citysense_alerts_notifications_pending")
        ]
        assert sorted(int(ln.rsplit(" ", 1)[1]) for ln in pending)[0] == 0  # the good one
        assert sorted(int(ln.rsplit(" ", 1)[1]) for ln in pending)[1] > 0  # the broken one
        rules_out = alerts.get("/api/v1/alarm-rules", VIEWER)["rules"]
        assert [r["name"] for r in rules_out] == ["pm25-high", "station-silent"]
    finally:
        code = alerts.stop()
        receiver.stop()
        bad.stop()
    assert code == 0, alerts.log_tail()
    # the test made the state folder itself (an existing folder keeps its mode, with a
    # warning when others may enter it); the store and its SQLite companions are 0600
    for name in ("alerts.sqlite3", "alerts.sqlite3-wal", "alerts.sqlite3-shm"):
        if (state / name).exists():
            assert ((state / name).stat().st_mode & 0o777) == 0o600, name


def test_a_new_state_folder_is_private(tmp_path: Path) -> None:
    store = AlarmStore(tmp_path / "fresh" / "state")
    try:
        assert ((tmp_path / "fresh" / "state").stat().st_mode & 0o777) == 0o700
        assert (store.path.stat().st_mode & 0o777) == 0o600
    finally:
        store.close()


KINDS_RULES = """
[[rule]]
name = "aqi-heavy"
kind = "aqi"
level = 5

[[rule]]
name = "jam"
kind = "congestion"
above = 8
window = "30m"

[[rule]]
name = "leak"
kind = "leak"

[[rule]]
name = "battery"
kind = "battery_low"
below = 15

[[rule]]
name = "radio"
kind = "radio_poor"
window = "1h"
"""


def test_every_kind_of_rule_over_stored_data(tmp_path: Path) -> None:
    """A haze day in one district (AQI), a jam, a leaking meter, a flat battery, a bad radio."""
    state = tmp_path / "state"
    state.mkdir()
    now = _now()
    hour = 3_600_000
    rows = []
    for h in range(24):  # a day of haze over east, clean air in west
        t = now - h * hour - 60_000
        rows += [
            reading("aq-east", "east", t, pm25=250.0),
            reading("aq-west", "west", t, pm25=20.0),
        ]
    for k in range(6):  # east's traffic stands still; west flows
        t = now - k * 60_000
        rows += [
            reading("tc-east", "east", t, kind="traffic_counter", avg_speed=3.0, occupancy=90.0),
            reading("tc-west", "west", t, kind="traffic_counter", avg_speed=55.0, occupancy=10.0),
        ]
    rows += [
        reading("wm-east", "east", now - 60_000, kind="water_meter", leak=True, water_flow=0.2),
        reading("wm-west", "west", now - 60_000, kind="water_meter", leak=False, water_flow=0.0),
        reading("aq-east", "east", now - 30_000, battery=8.0, rsrp=-131.0),
        reading("aq-west", "west", now - 30_000, battery=80.0, rsrp=-90.0),
    ]
    write_readings(state, rows)
    rules = tmp_path / "rules.toml"
    rules.write_text(KINDS_RULES)
    alerts = AlertsProcess(tmp_path, alerts_args(rules, state)).start()
    try:
        wait_until(lambda: len(alerts.get("/api/v1/alarms")["alarms"]) >= 5, 30, "five alarms")
        time.sleep(1)
        got = {a["rule"]: a for a in alerts.get("/api/v1/alarms")["alarms"]}
        assert set(got) == {"aqi-heavy", "jam", "leak", "battery", "radio"}, got
        assert got["aqi-heavy"]["subject"] == {"district": "east"}
        assert got["aqi-heavy"]["value"] >= 201 and got["aqi-heavy"]["evidence"]["level"] == "V"
        assert got["jam"]["subject"] == {"district": "east"} and got["jam"]["value"] >= 8
        assert got["leak"]["subject"] == {"device": "wm-east"}
        assert got["battery"]["subject"] == {"device": "aq-east"} and got["battery"]["value"] == 8.0
        assert got["radio"]["subject"] == {"device": "aq-east"}
        assert len(alerts.get("/api/v1/alarms")["alarms"]) == 5  # nothing about west
    finally:
        alerts.stop()
