"""Notification receivers and their delivery loops: at least once, from the durable queue.

* Each receiver (a webhook, the MQTT alarm topics) has its own loop: a slow or dead receiver
  delays only itself, never rule evaluation or another receiver.
* A delivery is done when the receiver says so (2xx; for chat robots also ``errcode`` 0; for
  MQTT the broker's PUBACK); anything else -- an error status, a timeout, a refused
  connection -- is retried with capped exponential back-off (with jitter), for as long as it
  takes, across restarts. Nothing is dropped.
* Every attempt sends the same event with the same ``event_id`` (the idempotency key).
* Webhook bodies are signed: ``X-Citysense-Signature: sha256=<hex HMAC-SHA256(secret, body)>``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from alerts.store import AlarmStore, Pending
from citysense import topics
from citysense.config import mask_url
from citysense.errors import ConfigError

log = logging.getLogger(__name__)

TEMPLATES: tuple[str, ...] = ("generic", "dingtalk", "wecom")
ALARM_TOPIC = topics.ALARMS
_SEVERITY_ZH = {"info": "提示", "minor": "次要", "major": "重要", "critical": "紧急"}
_EVENT_ZH = {"raised": "告警", "acknowledged": "已确认", "cleared": "已恢复"}


class DeliveryError(Exception):
    """The receiver did not take the event (retried)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Citysense-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def parse_webhook(item: str) -> tuple[str, str]:
    """``URL`` / ``dingtalk+URL`` / ``wecom+URL`` -> (template, URL); bad ones: ConfigError."""
    template, url = "generic", item.strip()
    for name in ("dingtalk", "wecom"):
        if url.startswith(name + "+"):
            template, url = name, url[len(name) + 1 :]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--webhook {mask_url(item)!r}: not an http(s) URL "
            "(dingtalk+https://... and wecom+https://... select those formats)"
        )
    try:
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"--webhook {mask_url(item)!r}: bad port") from exc
    return template, url


def receiver_name(template: str, url: str) -> str:
    """A stable name for a webhook's queue (the URL itself may hold a token: hashed)."""
    digest = hashlib.sha256(f"{template}+{url}".encode()).hexdigest()[:12]
    return f"webhook-{digest}"


def chat_text(event: dict[str, Any]) -> tuple[str, str]:
    """(title, markdown) of an event for a chat robot, in Chinese and English."""
    alarm = event["alarm"]
    subject = ", ".join(f"{k} {v}" for k, v in alarm["subject"].items())
    sev = alarm["severity"]
    what = event["event"]
    title = f"[{_SEVERITY_ZH.get(sev, sev)}] {_EVENT_ZH.get(what, what)}: {alarm['rule']} {subject}"
    value = alarm.get("value")
    lines = [
        f"### {title}",
        f"- 规则 rule: {alarm['rule']}",
        f"- 对象 subject: {subject}",
        f"- 级别 severity: {sev}",
        f"- 事件 event: {what} at {event['at']}",
        f"- 数值 value: {value:g}" if isinstance(value, int | float) else "- 数值 value: -",
    ]
    if alarm.get("acknowledged_by"):
        lines.append(f"- 确认人 acknowledged by: {alarm['acknowledged_by']}")
    lines.append(f"- event_id: {event['event_id']}")
    return title, "\n".join(lines)


class Receiver(Protocol):
    name: str

    async def send(self, item: Pending) -> None:
        """Deliver ``item`` or raise :class:`DeliveryError`."""
        ...

    async def aclose(self) -> None: ...


class Webhook:
    """An HTTP receiver: the generic JSON event, or a DingTalk/WeCom robot message."""

    def __init__(
        self,
        url: str,
        template: str,
        secret: bytes | None,
        timeout: float,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.template = template
        self.secret = secret
        self.name = receiver_name(template, url)
        self.shown = f"{template} {mask_url(url).split('?')[0]}"
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    def request(self, item: Pending) -> tuple[str, bytes, dict[str, str]]:
        """(URL, body, headers) of one attempt."""
        headers = {
            "Content-Type": "application/json",
            "X-Citysense-Event-Id": item.event_id,
            "Idempotency-Key": item.event_id,
        }
        url = self.url
        if self.template == "generic":
            body = item.body
        else:
            title, text = chat_text(json.loads(item.body))
            if self.template == "dingtalk":
                msg: dict[str, Any] = {
                    "msgtype": "markdown",
                    "markdown": {"title": title, "text": text},
                }
                if self.secret:  # DingTalk's signed robots: timestamp + sign in the query
                    ts = str(_now_ms())
                    mac = hmac.new(
                        self.secret, f"{ts}\n{self.secret.decode()}".encode(), hashlib.sha256
                    )
                    sig = urllib.parse.quote_plus(base64.b64encode(mac.digest()))
                    url += ("&" if "?" in url else "?") + f"timestamp={ts}&sign={sig}"
            else:
                msg = {"msgtype": "markdown", "markdown": {"content": text}}
            body = json.dumps(msg, ensure_ascii=False).encode()
        if self.secret:
            headers["X-Citysense-Signature"] = sign(self.secret, body)
        return url, body, headers

    async def send(self, item: Pending) -> None:
        url, body, headers = self.request(item)
        try:
            resp = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"no answer within the timeout ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= resp.status_code < 300:
            hint = (
                " (Gone: the receiver says this URL is no longer valid)"
                if resp.status_code == 410
                else ""
            )
            raise DeliveryError(f"HTTP {resp.status_code}{hint}")
        if self.template != "generic":
            try:
                code = resp.json().get("errcode", 0)
            except (ValueError, AttributeError):
                code = 0
            if code not in (0, "0"):
                raise DeliveryError(f"robot answered errcode {code}: {resp.text[:200]}")

    async def aclose(self) -> None:
        await self._client.aclose()


class MqttAlarms:
    """The alarm topics: ``citysense/v1/alarms/<id>`` holds each open alarm's state, retained;
    a cleared alarm is published once (not retained) and its retained message removed."""

    name = "mqtt"

    def __init__(self, publish: Callable[[str, bytes, bool, float], None], timeout: float) -> None:
        self._publish = publish
        self._timeout = timeout

    async def send(self, item: Pending) -> None:
        event = json.loads(item.body)
        alarm = event["alarm"]
        topic = f"{ALARM_TOPIC}/{alarm['id']}"
        state = json.dumps({**alarm, "event_id": item.event_id}, separators=(",", ":")).encode()

        def run() -> None:
            if alarm["state"] == "cleared":
                self._publish(topic, state, False, self._timeout)
                self._publish(topic, b"", True, self._timeout)
            else:
                self._publish(topic, state, True, self._timeout)

        try:
            await asyncio.to_thread(run)
        except DeliveryError:
            raise
        except Exception as exc:
            raise DeliveryError(f"MQTT: {exc}") from exc

    async def aclose(self) -> None:
        return None


@dataclass
class DeliveryStats:
    delivered: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    """One delivery loop per receiver over the store's queue."""

    def __init__(
        self,
        store: AlarmStore,
        receivers: list[Receiver],
        max_delay: float,
        stats: DeliveryStats,
    ) -> None:
        self.store = store
        self.receivers = receivers
        self.max_delay = max(1.0, max_delay)
        self.stats = stats
        self._wake = {r.name: asyncio.Event() for r in receivers}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.receivers]

    def wake(self) -> None:
        for ev in self._wake.values():
            ev.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for r in self.receivers:
                tg.create_task(self._loop(r), name=f"deliver-{r.name}")

    async def _loop(self, r: Receiver) -> None:
        while True:
            try:
                await self._deliver(r)
            except Exception:  # the queue itself failed (disk): logged, tried again
                log.exception("delivery to %s stopped; restarting in 5 s", r.name)
                await asyncio.sleep(5)

    async def _deliver(self, r: Receiver) -> None:
        wake = self._wake[r.name]
        failures = 0
        shown = getattr(r, "shown", r.name)
        while True:
            wake.clear()
            now = _now_ms()
            batch = await asyncio.to_thread(self.store.due, r.name, now)
            for item in batch:
                try:
                    await r.send(item)
                except DeliveryError as exc:
                    failures += 1
                    delay = min(self.max_delay, 2.0 ** min(failures - 1, 20))
                    delay *= random.uniform(0.8, 1.0)
                    next_at = _now_ms() + int(delay * 1000)
                    self.stats.retried[r.name] = self.stats.retried.get(r.name, 0) + 1
                    log.warning(
                        "%s did not take event %s (attempt %d): %s; retry in %.1f s",
                        shown,
                        item.event_id,
                        item.attempts + 1,
                        exc,
                        delay,
                    )
                    await asyncio.to_thread(self.store.failed, r.name, item.seq, next_at, str(exc))
                    await asyncio.to_thread(self.store.postpone, r.name, next_at)
                    break
                failures = 0
                await asyncio.to_thread(self.store.delivered, r.name, item.seq, _now_ms())
                self.stats.delivered[r.name] = self.stats.delivered.get(r.name, 0) + 1
            else:
                if len(batch) == 100:
                    continue  # more are due
            nxt = await asyncio.to_thread(self.store.next_due, r.name)
            timeout = 60.0 if nxt is None else max(0.0, (nxt - _now_ms()) / 1000)
            if timeout > 0:
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except TimeoutError:
                    pass
