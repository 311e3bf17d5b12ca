"""The gateway's device-facing servers: device keys, the CoAP context and CoAPS (DTLS PSK)."""

from __future__ import annotations

import logging
from pathlib import Path

import aiocoap
import aiocoap.interfaces

from citysense.compat import aiocoap as compat_aiocoap
from citysense.compat.aiocoap import GatewayTuning
from citysense.config import Settings, parse_hostport
from citysense.credentials import OSCORE, read_device_keys
from citysense.errors import ConfigError, InputError
from edge import coap_site
from edge.coap_site import Accept
from edge.compat import dtls as dtls_compat
from edge.compat import oscore as oscore_compat
from edge.devicekeys import DeviceKeyStore
from edge.linkstate import exclusive
from edge.metrics import Metrics

#: The gateway's log: these lines belong to the service.
log = logging.getLogger("edge.service")

#: Receive buffer asked for the CoAP socket (the kernel default holds ~166 datagrams).
COAP_RCVBUF = 4 * 1024 * 1024
COAPS_PORT = 5684
#: How long an answer may wait for the outbox commit and still ride on the ACK, seconds.
#: aiocoap's default (0.1 s) turns answers that queue behind a commit under load into
#: separate responses, which doubles the datagrams per uplink; below the device's ACK_TIMEOUT
#: (2 s) a piggybacked answer never makes the device retransmit.
PIGGYBACK_WINDOW = 1.0
#: How long aiocoap keeps each answer to recognise a retransmitted CON, seconds. RFC 7252's
#: EXCHANGE_LIFETIME (247 s) adds a 100 s worst-case network latency each way to the 45 s a
#: device spends retransmitting; aiocoap holds every answer (with its request) that long, which
#: at thousands of uplinks per second is most of the process's memory. 60 s covers a device's
#: whole retransmission span; a later duplicate is absorbed by the outbox's idempotency.
DEDUP_WINDOW = 60.0


def open_device_keys(
    settings: Settings, state_dir: Path, metrics: Metrics
) -> DeviceKeyStore | None:
    """The device keys of ``--device-keys``, or ``None`` (logged: devices unauthenticated)."""
    if settings.device_keys is None:
        if settings.device_auth == "required":
            raise ConfigError("--device-auth required needs --device-keys FILE")
        log.warning(
            "no --device-keys: devices are not authenticated; any peer on the device network "
            "can send readings for any registered device"
        )
        return None
    try:
        keys = read_device_keys(settings.device_keys)
    except InputError as exc:
        raise ConfigError(f"--device-keys {settings.device_keys}: {exc}") from exc

    def on_oscore_event(device: str, outcome: str) -> None:
        metrics.inc("citysense_edge_device_uplinks_total", scheme=OSCORE, outcome=outcome)

    store = DeviceKeyStore(keys, state_dir, on_oscore_event=on_oscore_event)
    counts = ", ".join(f"{n} {scheme}" for scheme, n in sorted(store.schemes().items()))
    log.info("device keys: %s (%s)", counts or "none", settings.device_keys)
    if settings.device_auth == "optional":
        log.warning(
            "--device-auth optional: devices without a key are accepted unauthenticated "
            "on plain CoAP"
        )
    return store


async def start_coaps(
    settings: Settings,
    coap_host: str,
    context: aiocoap.Context,
    keys: DeviceKeyStore,
    metrics: Metrics,
) -> dtls_compat.DtlsServer:
    host, port = (
        parse_hostport(settings.coaps, "--coaps") if settings.coaps else (coap_host, COAPS_PORT)
    )
    try:
        server = await dtls_compat.start_dtls_server(
            context,
            (host, port),
            keys,
            max_states=settings.dtls_sessions,
            on_handshake=lambda outcome: metrics.inc(
                "citysense_edge_dtls_handshakes_total", outcome=outcome
            ),
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--coaps {host}:{port}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    log.info("CoAPS (DTLS 1.2 PSK) on %s:%d", host, port)
    return server


async def open_context(
    settings: Settings,
    accept: Accept,
    keys: DeviceKeyStore | None,
    metrics: Metrics,
    bind: tuple[str, int],
) -> aiocoap.Context:
    """The CoAP server context on ``bind`` answering with ``accept`` (OSCORE with keys)."""
    site: aiocoap.interfaces.Resource = coap_site.build_site(
        accept,
        settings.max_uplink_bytes,
        lambda: metrics.inc("citysense_edge_rejected_total", reason="too_large"),
    )
    if keys is not None:
        site = oscore_compat.OscoreSite(site, keys)
    try:
        return await compat_aiocoap.ServerContext.create_server_context(
            site,
            bind=bind,
            server_credentials=keys,
            transports=["udp6", "tcpserver"] if settings.coap_tcp else ["udp6"],
        )
    except OSError as exc:
        raise ConfigError(f"--coap {settings.coap}: {exc.strerror or exc}") from exc


def tune_context(settings: Settings, context: aiocoap.Context, bind: tuple[str, int]) -> None:
    """Timings, exclusive port and receive buffer of the running CoAP context (logged)."""
    if not compat_aiocoap.LEAN_RENDERING:
        log.info("aiocoap's rendering internals not found: its own request path is used")
    if not compat_aiocoap.tune_incoming(context, GatewayTuning(PIGGYBACK_WINDOW, DEDUP_WINDOW)):
        log.warning("aiocoap's message layer not found: its default CoAP timings apply")
    exclusive(context)
    granted = compat_aiocoap.raise_receive_buffer(context, COAP_RCVBUF)
    log.info(
        "CoAP on %s:%d (UDP%s; receive buffer %s bytes)",
        bind[0],
        bind[1],
        " and TCP" if settings.coap_tcp else " only",
        granted,
    )
