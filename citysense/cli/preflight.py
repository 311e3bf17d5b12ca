"""``citysense demo``'s checks of the servers named on its command line, before anything starts:
a demo that cannot reach them, or cannot write, refuses at once (exit 2, one line) instead of
running empty."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from citysense.config import Settings, mask_url, parse_mqtt_url
from citysense.errors import ConfigError, RetryableError
from timeseries.connection import InfluxTarget, detect_api, ensure_storage, storage_target


async def preflight(settings: Settings, client_id: str) -> None:
    """Check ``--mqtt`` and ``--influx`` when given (:class:`ConfigError` when they cannot work)."""
    if settings.mqtt is not None:
        await asyncio.to_thread(check_broker, settings.mqtt, client_id)
    if settings.influx is not None:
        await check_storage(settings)


def check_broker(url: str, client_id: str, timeout: float = 10.0) -> None:
    """Refuse (:class:`ConfigError`) a ``--mqtt`` broker that does not accept our connection."""
    broker = parse_mqtt_url(url)
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, reason: Any, props: Any
    ) -> None:
        outcome.append("" if not reason.is_failure else str(reason))
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set()
    client.on_connect = on_connect
    where = f"--mqtt {mask_url(url)}"
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot connect: {exc.strerror or exc}") from exc
    client.loop_start()
    try:
        if not answered.wait(timeout):
            raise ConfigError(f"{where}: no answer to CONNECT within {timeout:.0f} s")
        if outcome[0]:
            raise ConfigError(f"{where}: the broker refused the connection: {outcome[0]}")
    finally:
        client.disconnect()
        client.loop_stop()


async def check_storage(settings: Settings) -> None:
    """Refuse (:class:`ConfigError`) an ``--influx`` server that cannot be reached or whose
    database cannot be made sure of (created when the credentials allow)."""
    target = storage_target(settings)
    assert isinstance(target, InfluxTarget)
    try:
        await ensure_storage(target, await detect_api(target))
    except RetryableError as exc:
        raise ConfigError(f"--influx {mask_url(settings.influx or '')}: {exc}") from exc
