"""Fault injection for the simulated fleet: what breaks, how often, and what the gateway
should answer.

``--faults NAME[=RATE],...`` turns faults on; each is seeded, so a run is repeatable:

===========  ==========================================================  ===============
name         effect                                                      expected answer
===========  ==========================================================  ===============
loss         each datagram, either way, is lost with probability RATE    2.04 after CoAP
             (the CON is retransmitted with the same message id)         retransmission
duplicate    a request datagram is sent twice (same message id)          2.04, stored once
corrupt      the SenML payload is cut short (malformed)                  4.00
skew         a share RATE of devices has a clock hours ahead             4.00
unknown      a share RATE of devices is missing from the registry        4.03
oversize     the payload is padded past the gateway's size limit         4.13
badformat    the payload is sent as Content-Format 50 (plain JSON)       4.15
outage       the radio is down from RATE s to 2xRATE s after the start;  2.04 (or 5.03
             uplinks queue on the devices and go out in a burst after    when the
             it                                                          gateway is full)
===========  ==========================================================  ===============

Per-device faults (``skew``, ``unknown``) pick devices by a hash of their id and the seed;
per-message faults draw from a seeded random generator.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from citysense.errors import ConfigError

#: rate used when a fault is named without one
DEFAULT_RATES: dict[str, float] = {
    "loss": 0.05,
    "duplicate": 0.05,
    "corrupt": 0.02,
    "skew": 0.05,
    "unknown": 0.02,
    "oversize": 0.01,
    "badformat": 0.01,
    "outage": 10.0,
}

#: the answer code (as text) each payload fault should get from a gateway
EXPECTED_CODES: dict[str, str] = {
    "corrupt": "4.00",
    "skew": "4.00",
    "unknown": "4.03",
    "oversize": "4.13",
    "badformat": "4.15",
}

#: how far ahead a skewed device's clock runs (ms): one to twelve hours
SKEW_MIN_MS = 3_600_000
SKEW_MAX_MS = 12 * 3_600_000


def parse_rates(
    items: Iterable[str],
    defaults: dict[str, float],
    option: str,
    durations: frozenset[str] = frozenset(),
) -> dict[str, float]:
    """``NAME[=RATE]`` items -> rates (``defaults`` when no rate is given); ConfigError
    naming ``option``. Rates are in [0, 1], except ``durations`` (positive seconds)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().lower().replace("-", "_")
        if name not in defaults:
            raise ConfigError(f"{option}: unknown fault {name!r} (known: {', '.join(defaults)})")
        if not sep:
            out[name] = defaults[name]
            continue
        try:
            rate = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{option}: {name}={raw!r} is not a number") from exc
        if name in durations:
            if rate <= 0:
                raise ConfigError(f"{option}: {name} needs a positive number of seconds")
        elif not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{option}: {name} rate must be between 0 and 1, not {rate}")
        out[name] = rate
    return out


def parse_faults(items: Iterable[str]) -> dict[str, float]:
    """``["loss=0.1", "corrupt"]`` -> ``{"loss": 0.1, "corrupt": 0.02}``; ConfigError if bad."""
    return parse_rates(items, DEFAULT_RATES, "--faults", frozenset({"outage"}))


def _device_share(device: str, seed: int, fault: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{fault}:{device}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


@dataclass(slots=True)
class FaultPlan:
    """The faults of one fleet run and the seeded draws that apply them."""

    rates: dict[str, float]
    seed: int = 1
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"citysense-faults-{self.seed}")

    @classmethod
    def from_settings(cls, faults: Iterable[str], seed: int) -> FaultPlan:
        return cls(parse_faults(faults), seed)

    def _draw(self, name: str) -> bool:
        rate = self.rates.get(name)
        return rate is not None and self.rng.random() < rate

    # transport faults
    def lose(self) -> bool:
        return self._draw("loss")

    def duplicate(self) -> bool:
        return self._draw("duplicate")

    # per-message payload faults: at most one per uplink, in this order
    def payload_fault(self) -> str | None:
        for name in ("corrupt", "oversize", "badformat"):
            if self._draw(name):
                return name
        return None

    # per-device faults
    def skew_ms(self, device: str) -> int:
        """How far ahead this device's clock runs (0 for most devices)."""
        rate = self.rates.get("skew")
        if rate is None or _device_share(device, self.seed, "skew") >= rate:
            return 0
        share = _device_share(device, self.seed, "skew-amount")
        return SKEW_MIN_MS + int(share * (SKEW_MAX_MS - SKEW_MIN_MS))

    def unknown(self, device: str) -> bool:
        """Whether this device is missing from the registry (it sends under a stray id)."""
        rate = self.rates.get("unknown")
        return rate is not None and _device_share(device, self.seed, "unknown") < rate

    def outage_window(self) -> tuple[float, float] | None:
        """(start, end) of the radio outage in seconds after the fleet's start."""
        length = self.rates.get("outage")
        return None if length is None else (length, 2 * length)


def corrupt(payload: bytes) -> bytes:
    """A payload cut short: never valid SenML JSON or CBOR."""
    return payload[: max(1, len(payload) // 2)]


def oversize(payload: bytes, content_format: int, limit: int = 1024) -> bytes:
    """The payload padded past ``limit`` bytes (trailing whitespace in JSON, junk in CBOR)."""
    pad = max(limit + 1 - len(payload), 1) + 16
    if content_format == 110:
        return payload + b" " * pad
    return payload + b"\x00" * pad
