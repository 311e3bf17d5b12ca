"""Pure parts of citysense alerts: gateway status, the device directory, webhook requests
(signature, DingTalk/WeCom formats), webhook URL checks, the store's transactions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import pytest

from alerts.engine import Observation, Transition
from alerts.notify import Webhook, parse_webhook, receiver_name, sign
from alerts.rules import Rule
from alerts.sources import DeviceDirectory, GatewayStatus, Reads
from alerts.store import AlarmConflict, AlarmStore
from citysense.errors import ConfigError
from timeseries.query import LatestValue

RULE = Rule(
    name="r",
    kind="metric",
    severity="critical",
    threshold=1.0,
    above=True,
    clear=1.0,
    for_ms=0,
    clear_for_ms=0,
    metric="pm25",
)


def test_gateway_status_follows_retained_messages() -> None:
    st = GatewayStatus()
    st.update("citysense/v1/gw-1/status", b'{"state":"online","since":5}', 1000)
    st.update("citysense/v1/gw-2/status", b'{"state":"offline","since":400}', 1000)
    st.update("citysense/v1/gw-2/status", b'{"state":"offline","since":900}', 1200)  # a repeat
    st.update("citysense/v1/gw-3/status", b"not json", 1000)  # ignored, logged
    st.update("citysense/v1/gw-4/up", b'{"state":"offline"}', 1000)  # not a status topic
    assert st.snapshot() == {"gw-1": ("online", 1000), "gw-2": ("offline", 400)}
    st.update("citysense/v1/gw-2/status", b"", 1300)  # retained message removed
    assert "gw-2" not in st.snapshot()


class FakeReader:
    """A :class:`~timeseries.query.Reader` stand-in holding rows in memory (pure logic test)."""

    def __init__(self) -> None:
        self.rows: list[LatestValue] = []
        self.ranges: list[tuple[int, int]] = []

    async def latest(
        self, metrics: tuple[str, ...], filters: Mapping[str, str], start: int, end: int
    ) -> list[LatestValue]:
        self.ranges.append((start, end))
        return [r for r in self.rows if start <= r.t < end]


def test_device_directory_reads_in_full_then_only_the_last_minutes() -> None:
    reader = FakeReader()
    reads = Reads(reader)  # type: ignore[arg-type]
    d = DeviceDirectory()
    reader.rows = [LatestValue("a", "air_station", "east", "s", "pm25", 1_000_000, 1.0)]
    now = 2_000_000
    assert asyncio.run(d.refresh(reads, now))["a"].last_seen == 1_000_000
    reader.rows.append(LatestValue("a", "air_station", "east", "s", "pm25", 2_010_000, 1.0))
    seen = asyncio.run(d.refresh(reads, now + 15_000))
    assert seen["a"].last_seen == 2_010_000
    assert reader.ranges[-1][0] == now - d.overlap_ms  # only the last minutes
    reader.rows = reader.rows[:1]  # an older answer never moves a device back
    assert asyncio.run(d.refresh(reads, now + 30_000))["a"].last_seen == 2_010_000
    asyncio.run(d.refresh(reads, now + d.full_every_ms + 1))  # a full read again
    assert reader.ranges[-1][0] < now - d.overlap_ms


def test_webhook_urls_are_checked() -> None:
    assert parse_webhook("https://x.example/h") == ("generic", "https://x.example/h")
    assert (
        parse_webhook("dingtalk+https://oapi.dingtalk.com/robot/send?access_token=t")[0]
        == "dingtalk"
    )
    assert (
        parse_webhook("wecom+https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")[0] == "wecom"
    )
    for bad in ("ftp://x/", "https://", "x", "http://h:70000/", "slack+https://x/"):
        with pytest.raises(ConfigError):
            parse_webhook(bad)
    name = receiver_name("dingtalk", "https://oapi.dingtalk.com/robot/send?access_token=secret")
    assert "secret" not in name and name.startswith("webhook-")


def _pending(tmp_path: Path) -> tuple[AlarmStore, object]:
    store = AlarmStore(tmp_path / "s")
    store.apply(
        [
            Transition(
                "raise",
                RULE,
                "gateway=gw-1",
                Observation({"gateway": "gw-1"}, 180.0),
                1_700_000_000_000,
            )
        ],
        ["w"],
    )
    [item] = store.due("w", 1_800_000_000_000)
    return store, item


def test_generic_body_is_signed_and_stable(tmp_path: Path) -> None:
    store, item = _pending(tmp_path)
    hook = Webhook("http://127.0.0.1:9/h", "generic", b"k", 1.0)
    _, body, headers = hook.request(item)  # type: ignore[arg-type]
    assert body == item.body and headers["X-Citysense-Signature"] == sign(b"k", body)  # type: ignore[attr-defined]
    assert (
        headers["X-Citysense-Signature"]
        == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    )
    assert headers["X-Citysense-Event-Id"] == json.loads(body)["event_id"]
    assert hook.request(item)[1] == body  # type: ignore[arg-type]
    asyncio.run(hook.aclose())
    store.close()


def test_chat_robot_formats(tmp_path: Path) -> None:
    store, item = _pending(tmp_path)
    ding = Webhook("https://oapi.dingtalk.com/robot/send?access_token=t", "dingtalk", b"SEC", 1.0)
    url, body, _ = ding.request(item)  # type: ignore[arg-type]
    msg = json.loads(body)
    assert msg["msgtype"] == "markdown" and "紧急" in msg["markdown"]["title"]
    assert (
        "gw-1" in msg["markdown"]["text"]
        and json.loads(item.body)["event_id"] in msg["markdown"]["text"]
    )  # type: ignore[attr-defined]
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    ts = q["timestamp"][0]
    expected = base64.b64encode(
        hmac.new(b"SEC", f"{ts}\nSEC".encode(), hashlib.sha256).digest()
    ).decode()
    assert q["sign"][0] == expected and q["access_token"] == ["t"]
    wecom = Webhook("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", "wecom", None, 1.0)
    msg = json.loads(wecom.request(item)[1])  # type: ignore[arg-type]
    assert (
        msg["msgtype"] == "markdown"
        and "gateway-" not in msg
        and "gw-1" in msg["markdown"]["content"]
    )
    for h in (ding, wecom):
        asyncio.run(h.aclose())
    store.close()


def test_store_one_open_alarm_per_subject_and_ack_rules(tmp_path: Path) -> None:
    store = AlarmStore(tmp_path / "s")
    obs = Observation({"district": "east"}, 5.0)
    [a] = store.apply([Transition("raise", RULE, "district=east", obs, 1000)], ["w", "mqtt"])
    with pytest.raises(sqlite3.IntegrityError):  # the unique index: never two open alarms
        store.apply([Transition("raise", RULE, "district=east", obs, 2000)], ["w"])
    assert store.open_pairs() == [("r", "district=east")]
    store.acknowledge(a["id"], "me", "ok", 1500, ["w", "mqtt"])
    with pytest.raises(AlarmConflict):
        store.acknowledge(a["id"], "me", "again", 1600, ["w"])
    [c] = store.apply([Transition("clear", RULE, "district=east", obs, 3000)], ["w", "mqtt"])
    assert c["state"] == "cleared" and c["acknowledged_by"] == "me"
    [b] = store.apply([Transition("raise", RULE, "district=east", obs, 4000)], ["w"])  # comes back
    assert b["id"] != a["id"]
    assert [e["event"] for e in store.alarm(a["id"])["events"]] == [
        "raised",
        "acknowledged",
        "cleared",
    ]
    assert store.stats(5000)["pending"] == {"w": 4, "mqtt": 3}
    store.close()
    assert oct(os.stat(tmp_path / "s").st_mode & 0o777) == "0o700"
    for f in (tmp_path / "s").iterdir():
        assert oct(f.stat().st_mode & 0o777) == "0o600", f
