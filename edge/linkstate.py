"""What the gateway tells its operator about its broker link and its outbox: one summary line
a minute while the broker is down (readings waiting, the oldest one's age), the truth at stop
(how many readings stay in the outbox for the next start), and a refusal of a CoAP address
another process already serves."""

from __future__ import annotations

import asyncio
import logging
import time

import aiocoap

from citysense.compat import aiocoap as compat_aiocoap
from citysense.config import parse_hostport
from citysense.errors import CitysenseError, ConfigError
from edge.outbox import Outbox
from edge.uplink import MqttLink

log = logging.getLogger(__name__)

#: How often the broker's connection state is checked for a due summary line, seconds.
LINK_WATCH_TICK = 1.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def claim_coap(option: str) -> tuple[str, int]:
    """``--coap``'s host and port; one gateway per CoAP address: :class:`ConfigError` when
    another process serves it."""
    host, port = parse_hostport(option, "--coap")
    try:
        compat_aiocoap.check_udp_free(host, port)
    except OSError as exc:
        raise ConfigError(
            f"--coap {option}: {exc.strerror or exc} (another process serves it)"
        ) from exc
    return host, port


def exclusive(context: aiocoap.Context) -> None:
    """No later process can join the CoAP socket (see :func:`compat_aiocoap.make_exclusive`)."""
    if not compat_aiocoap.make_exclusive(context):
        log.warning("aiocoap's UDP socket not found: a second process could share --coap")


async def watch_link(outbox: Outbox, link: MqttLink) -> None:
    """While the broker is down: one summary line per interval (what waits, and how old)."""
    while True:
        await asyncio.sleep(LINK_WATCH_TICK)  # a periodic check, not a wait for an event
        if not link.state.summary_due():
            continue
        try:
            stats = await outbox.stats()
        except CitysenseError as exc:
            link.state.summarise(f"the outbox cannot be read ({exc})")
            continue
        link.state.summarise(f"{_waiting(stats.depth, stats.oldest_ms)} waiting in the outbox")


def _waiting(depth: int, oldest_ms: int | None) -> str:
    if not depth or oldest_ms is None:
        return "no readings"
    age = max(0.0, (_now_ms() - oldest_ms) / 1000)
    return f"{depth} reading{'s' if depth != 1 else ''} (the oldest {age:.0f} s old)"


async def report_outbox_at_stop(outbox: Outbox) -> None:
    """The stop's last word: how many readings stay in the outbox for the next start."""
    try:
        stats = await outbox.stats()
    except CitysenseError as exc:
        log.error("stopping: the outbox cannot be read (%s); what it holds stays in it", exc)
        return
    if stats.depth:
        log.warning(
            "stopping: %s stay in the outbox for the next start "
            "(%d batches published and unconfirmed)",
            _waiting(stats.depth, stats.oldest_ms),
            stats.batches,
        )
    else:
        log.info("stopping: the outbox is empty, every reading is confirmed stored")
