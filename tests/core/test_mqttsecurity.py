"""Which broker answers are refused at start (exit 2) and which are retried."""

from __future__ import annotations

import asyncio
import ssl

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from citysense.config import BrokerUrl
from citysense.errors import ConfigError
from citysense.mqttsecurity import BrokerRefusedError, ConnectWatch, secure

BROKER = BrokerUrl("127.0.0.1", 8883, True, "gw-01", "pw")


def connack(code: int) -> ReasonCode:
    return ReasonCode(PacketTypes.CONNACK, identifier=code)


@pytest.mark.parametrize("code", [134, 135, 138])
def test_a_refusal_before_any_connection_is_fatal(code: int) -> None:
    watch = ConnectWatch(BROKER)
    watch.connack(connack(code))
    with pytest.raises(BrokerRefusedError) as err:
        asyncio.run(watch.settled(1))
    assert "\n" not in str(err.value) and "mqtts://127.0.0.1:8883" in str(err.value)
    assert "pw" not in str(err.value).replace("password", "")


def test_a_refusal_after_a_success_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    watch = ConnectWatch(BROKER)
    watch.connack(connack(0))
    watch.connack(connack(135))
    asyncio.run(watch.settled(1))  # no raise
    assert "retrying with back-off" in caplog.text


def test_an_unreachable_broker_is_not_a_refusal() -> None:
    watch = ConnectWatch(BROKER)
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    try:
        raise ConnectionRefusedError(111, "refused")
    except ConnectionRefusedError:
        watch.connect_failed(client, None)
    asyncio.run(watch.settled(1))
    assert watch.refused is None


def test_a_certificate_that_does_not_verify_is_fatal() -> None:
    watch = ConnectWatch(BROKER)
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "unable to get local issuer certificate"
    try:
        raise err
    except ssl.SSLError:
        watch.connect_failed(client, None)
    with pytest.raises(BrokerRefusedError, match="--mqtt-ca"):
        asyncio.run(watch.settled(1))


def test_tls_options_need_mqtts() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    with pytest.raises(ConfigError, match="mqtts://"):
        secure(client, BrokerUrl("h", 1883, False, None, None, ca="/etc/ssl/ca.crt"))
