"""Binding an uplink to the device that sent it, and the flood limits (pure, no I/O).

With device keys loaded, an uplink is accepted only when the identity its peer proved (an
OSCORE context or a DTLS PSK identity, :class:`~edge.devicekeys.DeviceClaim`) is the one
device its readings name:

* readings of two devices in one uplink: 4.03 (always, keys or not);
* a device the registry assigns to another gateway: 4.03, unless ``roaming``;
* no proof (plain CoAP, serial) for a device that has a key, or for any device when
  ``required``: 4.01;
* proof of another device: 4.03;
* more uplinks than the device's budget: 4.29 with Max-Age. The budget is a token bucket
  of ``device_burst`` refilled at ``device_rate`` uplinks per report interval of the
  device's kind (catalog);
* unauthenticated requests beyond ``source_rate`` per second from one source address (with
  keys loaded): 4.29, before anything is parsed.

A downlink command goes only in the answer to an uplink of the device that proved itself
(without keys, to any accepted uplink of the device, as before).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from citysense.catalog import KINDS
from citysense.registry import Device
from edge.devicekeys import DeviceClaim, DeviceKeyStore
from edge.ratelimit import TokenBuckets

UNAUTHORIZED = "4.01"
FORBIDDEN = "4.03"
TOO_MANY_REQUESTS = "4.29"

#: outcomes counted in ``citysense_edge_device_uplinks_total``
OK = "ok"
UNAUTHENTICATED = "unauthenticated"
WRONG_DEVICE = "wrong_device"
OTHER_GATEWAY = "other_gateway"
RATE_LIMITED = "rate_limited"
NONE = "none"  #: the scheme of an unauthenticated uplink
SERIAL = "serial"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A refusal: the CoAP code, the outcome counted, a short diagnostic, a Max-Age."""

    code: str
    outcome: str
    message: str
    max_age: int | None = None


class DeviceTrust:
    """The binding and flood policy of one gateway."""

    def __init__(
        self,
        registry: Mapping[str, Device],
        gateway: str,
        store: DeviceKeyStore | None = None,
        *,
        required: bool = True,
        roaming: bool = False,
        device_rate: float = 4.0,
        device_burst: int = 10,
        source_rate: float = 20.0,
    ) -> None:
        self.registry = registry
        self.gateway = gateway
        self.store = store
        self.required = required and store is not None
        self.roaming = roaming
        self.device_rate = device_rate
        self.device_burst = device_burst
        self.source_rate = source_rate
        self.devices = TokenBuckets()
        self.sources = TokenBuckets()
        self._rates = {
            name: device_rate / max(1, kind.report_interval_s) for name, kind in KINDS.items()
        }

    def check_source(self, claim: DeviceClaim | None, source: object, now: float) -> Verdict | None:
        """Before parsing: the per-source-address limit of unauthenticated traffic."""
        if claim is not None or self.store is None or self.source_rate <= 0:
            return None
        host = source_host(source)
        if host is None:
            return None
        wait = self.sources.take(host, self.source_rate, 2 * self.source_rate, now)
        if wait:
            return Verdict(TOO_MANY_REQUESTS, RATE_LIMITED, "too many requests", max_age=wait)
        return None

    def check(
        self, claim: DeviceClaim | None, devices: Collection[str], now: float
    ) -> Verdict | None:
        """After parsing: ``None`` if the uplink may be stored, else why not."""
        if len(devices) != 1:
            return Verdict(FORBIDDEN, WRONG_DEVICE, "one device per uplink")
        (device,) = devices
        registered = self.registry.get(device)
        if registered is None:
            return Verdict(FORBIDDEN, WRONG_DEVICE, f"unknown device {device[:96]}")
        if not self.roaming and registered.gateway != self.gateway:
            return Verdict(FORBIDDEN, OTHER_GATEWAY, f"{device} is not a device of this gateway")
        if self.store is not None:
            if claim is None:
                if self.required or self.store.key_of(device) is not None:
                    return Verdict(UNAUTHORIZED, UNAUTHENTICATED, f"{device} must authenticate")
            elif claim.device != device:
                return Verdict(FORBIDDEN, WRONG_DEVICE, "readings of another device")
        if self.device_rate > 0:
            rate = self._rates.get(registered.kind, self.device_rate / 60)
            wait = self.devices.take(device, rate, self.device_burst, now)
            if wait:
                return Verdict(
                    TOO_MANY_REQUESTS, RATE_LIMITED, "uplink rate exceeded", max_age=wait
                )
        return None

    def may_deliver(self, claim: DeviceClaim | None, device: str) -> bool:
        """Whether a command for ``device`` may ride on this uplink's answer."""
        if self.store is None:
            return True
        return claim is not None and claim.device == device


def scheme_of(claim: DeviceClaim | None, source: object) -> str:
    if claim is not None:
        return claim.scheme
    return SERIAL if isinstance(source, str) else NONE


def source_host(source: object) -> str | None:
    """The peer's IP address of a plain CoAP request (aiocoap's UDP remote), else ``None``."""
    sockaddr = getattr(source, "sockaddr", None)
    if isinstance(sockaddr, tuple) and sockaddr:
        return str(sockaddr[0])
    return None
