"""Plain data of a simulated module: fault names, timings, sockets, radio, identity digits."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from citysense.errors import ConfigError

#: fault name -> default rate (probability per command, or per line for ``garble``)
FAULT_DEFAULTS: Mapping[str, float] = {
    "garble": 0.02,
    "drop": 0.02,
    "delay": 0.05,
    "urc": 0.1,
    "reboot": 0.002,
    "deregister": 0.004,
    "junk": 0.01,
    "vanish": 0.001,
    "busy": 0.02,
}


def parse_faults(items: Iterable[str]) -> dict[str, float]:
    """``["garble=0.05", "drop", "all"]`` -> {name: rate}; :class:`ConfigError` if unknown."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, rate = item.partition("=")
        name = name.strip()
        if name == "all":
            out.update({k: (float(rate) if sep else v) for k, v in FAULT_DEFAULTS.items()})
            continue
        if name not in FAULT_DEFAULTS:
            raise ConfigError(
                f"unknown fault {name!r}; known: all, {', '.join(sorted(FAULT_DEFAULTS))}"
            )
        try:
            value = float(rate) if sep else FAULT_DEFAULTS[name]
        except ValueError as exc:
            raise ConfigError(f"fault {name}: rate {rate!r} is not a number") from exc
        if not 0 <= value <= 1:
            raise ConfigError(f"fault {name}: rate must be within 0..1")
        out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class ModuleTimings:
    """How long the module takes, in seconds (real-module values by default)."""

    boot: float = 3.0  #: from reset to the end of the boot banner
    register: float = 5.0  #: from boot to ``+CEREG: 1``
    response: float = 0.02  #: to answer a simple command
    max_delay: float = 1.0  #: the ``delay`` fault adds up to this much
    deregistered: float = 5.0  #: how long a ``deregister`` fault lasts
    vanished: float = 3.0  #: how long a ``vanish`` fault lasts
    qiopen: float = 0.2  #: until ``+QIOPEN: <id>,0``
    send_ack: float = 0.3  #: until ``+NSOSTR`` / ``SEND OK``

    def scaled(self, speed: float) -> ModuleTimings:
        """Every duration divided by ``speed`` (tests run modules fast)."""
        names = ("boot", "register", "response", "deregistered", "vanished", "qiopen", "send_ack")
        return replace(self, **{n: getattr(self, n) / speed for n in names})


def luhn_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@dataclass(slots=True)
class Socket:
    ident: int
    local_port: int
    #: (ip, port, bytes not yet read, the whole datagram)
    queue: deque[tuple[str, int, bytes, bytes]] = field(default_factory=deque)
    peer: tuple[str, int] | None = None


@dataclass(slots=True)
class Radio:
    rsrp: float
    snr: float
    rsrq: float
    cell_id: int
    pci: int
    earfcn: int
    tac: int
    band: int

    def drift(self, rng: random.Random) -> None:
        self.rsrp = min(-65.0, max(-125.0, self.rsrp + rng.gauss(0, 1.5)))
        self.snr = min(25.0, max(-8.0, self.snr + rng.gauss(0, 0.8)))
        self.rsrq = min(-3.0, max(-19.5, self.rsrq + rng.gauss(0, 0.5)))

    @property
    def ecl(self) -> int:
        return 0 if self.rsrp > -105 else 1 if self.rsrp > -115 else 2


#: an output item: text line (or raw bytes) and the datagram it delivers, if any
Item = tuple[str | bytes, bytes | None]
