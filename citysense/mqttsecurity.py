"""How an MQTT client proves who it is and checks who the broker is (INTERFACES §10.1).

One home for the TLS and credential setup of every paho client (edge, ingest, alerts) and
for the classification of a refused connection:

* :func:`secure` gives a paho client its user name and password and, for ``mqtts://``, a TLS
  context that verifies the broker with ``--mqtt-ca`` (the system's CAs without it) and
  presents ``--mqtt-cert``/``--mqtt-key`` when given.
* :class:`ConnectWatch` sees the outcome of each connection attempt. Before the first
  successful connection, a refusal that retrying cannot mend -- bad user name or password,
  not authorised, a broker certificate that does not verify, our certificate rejected -- is
  *refused at start*: :meth:`ConnectWatch.settled` raises :class:`BrokerRefusedError` (a
  :class:`~citysense.errors.ConfigError`: one line, exit 2). An unreachable broker is not a
  refusal (it may come up later). After a first success every refusal is logged and paho
  retries with its back-off: a revoked password never becomes a crash loop, and whatever
  waits in the outbox stays there.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import threading
from typing import Any

import paho.mqtt.client as mqtt

from citysense.config import BrokerUrl
from citysense.errors import ConfigError

log = logging.getLogger(__name__)

#: CONNACK reason codes (MQTT v5; paho maps 3.1.1 return codes 4 and 5 to 134 and 135)
#: that retrying does not mend.
_REFUSALS = {
    133: "the client identifier is not valid",
    134: "bad user name or password (check --mqtt-username and --mqtt-password-file)",
    # Mosquitto 2.0 answers a wrong password with 135 too
    135: "not authorised: wrong user name or password, or a user that may not connect "
    "(check --mqtt-username and --mqtt-password-file)",
    138: "this client is banned",
    140: "the authentication method is not supported",
}
#: TLS alerts a broker sends when it rejects our certificate.
_CERT_ALERTS = ("certificate", "unknown ca", "bad certificate", "handshake failure")


class BrokerRefusedError(ConfigError):
    """The broker refused us for a reason that retrying will not mend."""


def tls_context(broker: BrokerUrl) -> ssl.SSLContext:
    """A client TLS context: verify the broker (``ca`` or the system's), present ``cert``."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=broker.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--mqtt-ca {broker.ca}: {exc}") from exc
    if broker.cert is not None:
        try:
            context.load_cert_chain(broker.cert, broker.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--mqtt-cert {broker.cert} / --mqtt-key {broker.key}: {exc}"
            ) from exc
    return context


def secure(client: mqtt.Client, broker: BrokerUrl) -> ConnectWatch:
    """Configure ``client``'s credentials and TLS for ``broker``; returns its watch.

    The watch takes paho's ``on_connect_fail`` (to see why a connection attempt failed); the
    caller's ``on_connect`` should pass the CONNACK reason to :meth:`ConnectWatch.connack`.
    """
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    elif broker.password is not None:
        raise ConfigError("an MQTT password needs a user name (--mqtt-username)")
    if broker.tls:
        client.tls_set_context(tls_context(broker))
    elif broker.ca or broker.cert:
        raise ConfigError("--mqtt-ca and --mqtt-cert need an mqtts:// broker URL")
    watch = ConnectWatch(broker)
    client.on_connect_fail = watch.connect_failed
    client.on_log = watch.paho_log
    return watch


def _describe_tls(exc: BaseException) -> str | None:
    """A one-line reason for a TLS failure retrying will not mend, else ``None``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's certificate does not verify: {exc.verify_message} (check --mqtt-ca)"
    if isinstance(exc, ssl.SSLError):
        text = str(exc).lower()
        if any(alert in text for alert in _CERT_ALERTS):
            reason = getattr(exc, "reason", None) or str(exc)
            return f"the broker rejected our certificate: {reason} (check --mqtt-cert)"
    return None


class ConnectWatch:
    """The outcome of a client's connection attempts (thread-safe; see the module doc)."""

    def __init__(self, broker: BrokerUrl) -> None:
        self.broker = broker
        self.refused: str | None = None  #: why the broker refused us before a first success
        self._settled = threading.Event()
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        scheme = "mqtts" if self.broker.tls else "mqtt"
        return f"{scheme}://{self.broker.host}:{self.broker.port}"

    def _refuse(self, reason: str) -> None:
        with self._lock:
            # once the service went on (connected before, or the broker was unreachable at
            # first), a refusal is logged and retried, never fatal
            late = self._settled.is_set()
            if not late:
                self.refused = reason
                self._settled.set()
        if late:
            log.warning("broker %s refused us: %s; retrying with back-off", self.where, reason)

    # paho's thread -------------------------------------------------------------------

    def connack(self, reason: Any) -> None:
        """From ``on_connect``: the CONNACK's reason code."""
        if not reason.is_failure:
            self._settled.set()
            return
        value = int(reason.value)
        if value in _REFUSALS:
            self._refuse(f"{_REFUSALS[value]} [{reason}]")
        else:
            log.warning("broker %s refused the connection: %s; retrying", self.where, reason)
            self._settled.set()

    def connect_failed(self, client: mqtt.Client, userdata: object) -> None:
        """paho's ``on_connect_fail``, called while it handles the exception."""
        exc = sys.exc_info()[1]
        reason = _describe_tls(exc) if exc is not None else None
        if reason is not None:
            self._refuse(reason)
            return
        log.info("cannot reach the broker at %s (%s); retrying", self.where, exc)
        self._settled.set()  # unreachable is not refused: the broker may come up later

    def paho_log(self, client: mqtt.Client, userdata: object, level: int, text: str) -> None:
        """paho's ``on_log``: a certificate rejected after the handshake (TLS 1.3 sends the
        alert with the broker's first answer) shows up only here."""
        if level == mqtt.MQTT_LOG_ERR:
            lowered = text.lower()
            if "alert" in lowered and any(alert in lowered for alert in _CERT_ALERTS):
                self._refuse(f"the broker rejected our certificate: {text} (check --mqtt-cert)")

    # the event loop -------------------------------------------------------------------

    async def settled(self, limit: float) -> None:
        """Wait (at most ``limit`` s) for the first outcome; raise if refused at start."""
        await asyncio.to_thread(self._settled.wait, limit)
        if self.refused is not None:
            raise BrokerRefusedError(f"MQTT broker {self.where} refused us: {self.refused}")
