"""Nothing lost: ``kill -9`` of ``citysense alerts`` between raising and notifying, a receiver
down for 60 s (5 min with ``CITYSENSE_SOAK=1``), receivers answering 410, 500 or too slowly.
Every event is delivered after recovery; a repeat carries the same ``event_id`` and body."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from tests.alerts.helpers import (
    SECRET,
    AlertsProcess,
    Receiver,
    alerts_args,
    reading,
    write_readings,
)
from tests.servers import wait_until

SOAK = os.environ.get("CITYSENSE_SOAK") == "1"
OUTAGE_S = 300.0 if SOAK else 60.0
RULES = """
[[rule]]
name = "pm25-high"
kind = "metric"
metric = "pm25"
window = "1m"
group_by = "district"
above = 150.0
clear = 120.0
"""


def _now() -> int:
    return int(time.time() * 1000)


def _episode(state: Path, district: str, value: float) -> None:
    now = _now()
    write_readings(
        state,
        [
            reading(f"aq-{district}-{i}", district, now - k * 5000, pm25=value)
            for i in range(2)
            for k in range(12)
        ],
    )


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    state = tmp_path / "state"
    state.mkdir()
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    return state, rules, secret


def _all_events(alerts: AlertsProcess) -> dict[str, str]:
    """event_id -> event, of every alarm the service holds."""
    out: dict[str, str] = {}
    for a in alerts.get("/api/v1/alarms?limit=10000")["alarms"]:
        for e in alerts.get(f"/api/v1/alarms/{a['id']}")["events"]:
            out[e["event_id"]] = e["event"]
    return out


def _pending(alerts: AlertsProcess) -> int:
    text = alerts.get_text("/metrics")
    return sum(
        int(v)
        for v in re.findall(r"^citysense_alerts_notifications_pending\{[^}]*\} (\d+)$", text, re.M)
    )


def test_kill_9_and_a_receiver_down_lose_nothing(tmp_path: Path) -> None:
    state, rules, secret = _files(tmp_path)
    receiver = Receiver()  # reserved port, not serving yet: the receiver is down
    args = alerts_args(
        rules, state, receiver.url, secret=secret, webhook_timeout=1, retry_max_delay=5
    )
    _episode(state, "east", 200.0)
    down_since = time.monotonic()
    alerts = AlertsProcess(tmp_path, args).start()
    try:
        wait_until(lambda: alerts.get("/api/v1/alarms")["alarms"], 30, "the alarm to be raised")
        alerts.kill()  # raised and queued, not notified: kill -9
        assert not receiver.requests

        alerts = AlertsProcess(tmp_path, args).start()
        _episode(state, "east", 20.0)  # clears ...
        _episode(state, "west", 300.0)  # ... and another district raises, receiver still down
        wait_until(lambda: len(_all_events(alerts)) >= 3, 30, "clear and second raise")
        alerts.kill()  # again, with a backlog and retries under way
        alerts = AlertsProcess(tmp_path, args).start()
        remaining = OUTAGE_S - (time.monotonic() - down_since)
        if remaining > 0:
            time.sleep(remaining)
        assert _pending(alerts) >= 3

        receiver.delay = 1.5  # the first answers come after the sender gave up: repeats
        receiver.start()
        wait_until(lambda: len(receiver.accepted()) >= 1, 30, "a first delivery")
        receiver.delay = 0.0
        wait_until(lambda: _pending(alerts) == 0, 60, "the backlog to drain")

        expected = _all_events(alerts)
        assert sorted(e for e in expected.values()) == ["cleared", "raised", "raised"]
        got = receiver.unique()
        assert set(got) == set(expected)  # every event delivered, none invented
        assert {k: b["event"] for k, b in got.items()} == expected
        for body in receiver.accepted():  # a repeat is the same event, byte for byte
            assert json.dumps(body, sort_keys=True) == json.dumps(
                got[body["event_id"]], sort_keys=True
            )
        assert receiver.bad_signatures == 0
        assert len(receiver.requests) > len(got)  # the slow answers really caused repeats
    finally:
        alerts.stop()
        receiver.stop()


def test_410_500_and_slow_receivers_hold_up_nothing(tmp_path: Path) -> None:
    state, rules, secret = _files(tmp_path)
    good, gone, slow = Receiver().start(), Receiver().start(), Receiver().start()
    gone.status = 410
    slow.delay = 5.0
    _episode(state, "east", 200.0)
    alerts = AlertsProcess(
        tmp_path,
        alerts_args(
            rules,
            state,
            slow.url,
            gone.url,
            good.url,
            secret=secret,
            webhook_timeout=1,
            retry_max_delay=2,
        ),
    ).start()
    try:
        started = time.monotonic()
        wait_until(lambda: good.events("raised"), 20, "the good receiver's event")
        assert time.monotonic() - started < 10
        _episode(state, "east", 10.0)
        wait_until(lambda: good.events("cleared"), 20, "the good receiver's second event")

        def evaluated() -> int:
            text = alerts.get_text("/metrics")
            m = re.search(r"^citysense_alerts_rules_evaluated_total (\d+)$", text, re.M)
            return int(m.group(1)) if m else 0

        # evaluation goes on while two receivers fail, and the log says why they fail
        wait_until(lambda: evaluated() > 20, 30, "evaluation cycles")
        wait_until(
            lambda: "no answer within the timeout" in alerts.log_tail(50000), 30, "the timeout"
        )
        assert "HTTP 410 (Gone" in alerts.log_tail(50000)
        assert gone.requests and not gone.accepted()
        gone.status, slow.delay = 200, 0.0  # both recover: everything arrives
        wait_until(lambda: len(gone.unique()) == 2 and len(slow.unique()) == 2, 30, "recovery")
        assert set(gone.unique()) == set(good.unique()) == set(slow.unique())
    finally:
        alerts.stop()
        for r in (good, gone, slow):
            r.stop()
