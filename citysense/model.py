"""The reading and batch model: frozen, slotted values shared by every service.

A :class:`Reading` is what one device reported at one instant (epoch milliseconds, UTC),
already attributed to its kind, district and site from the device registry. A :class:`Batch`
is what a gateway publishes on ``citysense/v1/{gateway}/up`` (INTERFACES.md section 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Value = float | bool

#: Device ids: 1-96 characters from ``[A-Za-z0-9:._-]`` (INTERFACES.md section 1).
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9:._-]{1,96}")
#: Gateway ids: ``[a-z0-9][a-z0-9-]{0,47}``.
GATEWAY_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")
#: District and site ids: ``[a-z0-9_-]{1,48}``.
PLACE_ID_RE = re.compile(r"[a-z0-9_-]{1,48}")

ENVELOPE_VERSION = 1

#: AT command dialects of the NB-IoT modules a gateway drives over serial (PROTOCOLS.md).
SERIAL_DIALECTS: tuple[str, ...] = ("bc95", "sim7020", "bc66")


@dataclass(frozen=True, slots=True)
class Reading:
    """Values one device reported at time ``t`` (epoch ms)."""

    device: str
    kind: str
    district: str
    site: str
    t: int
    values: dict[str, Value] = field(hash=False)


@dataclass(frozen=True, slots=True)
class Batch:
    """One gateway batch: ``seq`` grows by one per batch and survives restarts."""

    gateway: str
    seq: int
    sent: int
    readings: tuple[Reading, ...]
    v: int = ENVELOPE_VERSION
