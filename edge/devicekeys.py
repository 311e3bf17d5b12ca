"""The gateway's device credential store: every device's key, found by its id on the wire.

:class:`DeviceKeyStore` is the ``server_credentials`` of the aiocoap context. aiocoap finds
a credential by walking all of them (about 1 ms per request at 3,000 devices); here
``find_oscore`` (by OSCORE kid) and ``find_dtls_psk`` (by PSK identity) are dictionary
look-ups. What a resource then sees in ``request.remote.authenticated_claims`` is one
:class:`DeviceClaim`.

OSCORE security contexts live in ``<state>/oscore/<kid hex>/`` (0700) and are loaded on a
device's first request. At most ``max_open`` are held open (each holds a file lock, so the
bound also follows the process's open-file limit); the least recently used is saved cleanly
and closed to make room, unless it was used in the last 30 s (a request may still hold it).
:meth:`close` saves all.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiocoap.credentials import CredentialsMap

from citysense.credentials import DTLS_PSK, OSCORE, DeviceKey
from edge.compat import oscore as oscore_compat

log = logging.getLogger(__name__)

MAX_OPEN_CONTEXTS = 4096
#: a context used this recently is not closed to make room (a request may still hold it)
MIN_IDLE_BEFORE_CLOSE = 30.0


def open_files_budget(wanted: int) -> int:
    """How many contexts may be open: each holds a file (its lock). Raises the process's
    soft limit of open files towards the hard one and keeps half of it for sockets."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = min(hard if hard != resource.RLIM_INFINITY else 1 << 20, 2 * wanted + 1024)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ValueError, OSError):
        return max(16, min(wanted, 256))
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, (soft - 512) // 2))


@dataclass(frozen=True, slots=True)
class DeviceClaim:
    """An authenticated peer: the device it proved to be, and how."""

    device: str
    scheme: str


class DeviceKeyStore(CredentialsMap):
    """Device keys indexed by OSCORE kid and PSK identity (aiocoap's credentials interface)."""

    def __init__(
        self,
        keys: Iterable[DeviceKey],
        state_dir: Path,
        *,
        max_open: int = MAX_OPEN_CONTEXTS,
        on_oscore_event: Callable[[str, str], None] = lambda device, outcome: None,
    ) -> None:
        super().__init__()
        self.by_device: dict[str, DeviceKey] = {}
        self._kid: dict[bytes, DeviceKey] = {}
        self._psk: dict[bytes, tuple[bytes, DeviceClaim]] = {}
        for key in keys:
            self.by_device[key.device] = key
            if key.scheme == OSCORE:
                self._kid[key.id] = key
            elif key.scheme == DTLS_PSK:
                self._psk[key.id] = (key.secret, DeviceClaim(key.device, DTLS_PSK))
        self.folder = state_dir / "oscore"
        self.max_open = open_files_budget(max_open)
        self._open: OrderedDict[bytes, oscore_compat.DeviceSecurityContext] = OrderedDict()
        self._used: dict[bytes, float] = {}
        self._on_oscore_event = on_oscore_event

    # ------------------------------------------------------------------ look-ups

    def key_of(self, device: str) -> DeviceKey | None:
        return self.by_device.get(device)

    def schemes(self) -> Mapping[str, int]:
        counts: dict[str, int] = {}
        for key in self.by_device.values():
            counts[key.scheme] = counts.get(key.scheme, 0) + 1
        return counts

    def find_dtls_psk(self, identity: bytes) -> tuple[bytes, DeviceClaim]:
        """(key, claim) of a PSK identity; ``KeyError`` if unknown."""
        return self._psk[identity]

    def find_oscore(self, unprotected: Mapping[Any, Any]) -> Any:
        """The security context of a request's kid; ``KeyError`` if unknown."""
        kid = unprotected.get(oscore_compat.COSE_KID)
        if unprotected.get(oscore_compat.COSE_KID_CONTEXT) is not None:
            raise KeyError("no kid context is used")
        context = self._open.get(kid)  # type: ignore[arg-type]
        if context is not None:
            self._open.move_to_end(kid)  # type: ignore[arg-type]
            self._used[kid] = time.monotonic()  # type: ignore[index]
            return context
        return self._load(self._kid[kid])  # type: ignore[index]

    def find_all_used_contextless_oscore_kid(self) -> set[bytes]:
        return set(self._kid)

    def _load(self, key: DeviceKey) -> Any:
        now = time.monotonic()
        while len(self._open) >= self.max_open:
            kid = next(iter(self._open))
            if now - self._used.get(kid, 0.0) < MIN_IDLE_BEFORE_CLOSE:
                break  # every open context is busy: hold one more for now
            oldest = self._open.pop(kid)
            self._used.pop(kid, None)
            oscore_compat.save_context(oldest)
        try:
            context = oscore_compat.open_context(self.folder / key.id.hex(), key)
        except (OSError, ValueError) as exc:
            log.error("cannot open the OSCORE context of %s: %s", key.device, exc)
            raise KeyError(key.device) from exc
        context.authenticated_claims = [DeviceClaim(key.device, OSCORE)]
        device = key.device
        context.on_event = lambda outcome: self._on_oscore_event(device, outcome)
        self._open[key.id] = context
        self._used[key.id] = now
        return context

    @property
    def open_contexts(self) -> int:
        return len(self._open)

    def close(self) -> None:
        """Save every open OSCORE context (sequence numbers, replay windows) and unlock it."""
        self._used.clear()
        while self._open:
            _, context = self._open.popitem()
            try:
                oscore_compat.save_context(context)
            except OSError as exc:
                log.error("cannot save an OSCORE context: %s", exc)


def claim_of(remote: object) -> DeviceClaim | None:
    """The device a request's peer proved to be, or ``None`` (plain CoAP, serial)."""
    claims = getattr(remote, "authenticated_claims", None)
    if not claims:
        return None
    claim = claims[0]
    return claim if isinstance(claim, DeviceClaim) else None
