"""API keys and roles shared by every HTTP service (the operator API and ``citysense alerts``).

Pure: no web framework here. Only SHA-256 digests of the keys are kept, and a presented key is
compared with every digest in constant time. Roles rank ``public`` < ``viewer`` < ``operator``;
a route declares the role it needs in its ``openapi_extra`` under :data:`ROLE_KEY`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Role = Literal["viewer", "operator"]
ROLE_KEY = "x-role"
RANK = {"public": 0, "viewer": 1, "operator": 2}


def role(required: Literal["public", "viewer", "operator"]) -> dict[str, object]:
    """``openapi_extra`` declaring the role a route needs."""
    return {ROLE_KEY: required}


@dataclass(frozen=True, slots=True)
class KeyMatch:
    role: Role
    key_id: str  #: short digest prefix, safe to log


class KeyStore:
    """API keys by SHA-256 digest; lookups compare against every digest in constant time."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._digests: list[tuple[bytes, Role]] = [
            (hashlib.sha256(k.encode()).digest(), r)  # type: ignore[misc]
            for k, r in keys.items()
        ]

    @property
    def open(self) -> bool:
        return not self._digests

    def lookup(self, presented: str) -> KeyMatch | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: KeyMatch | None = None
        for stored, r in self._digests:
            if hmac.compare_digest(stored, digest):
                found = KeyMatch(r, stored.hex()[:8])
        return found


class RateLimiter:
    """Token buckets: ``per_minute`` requests per minute per key, bursts up to that many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds until the next request would be."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > 10_000:  # bounded memory: forget idle full buckets
            for k in [k for k, (t, _) in self._buckets.items() if t >= self.capacity - 1]:
                del self._buckets[k]
        return (1.0 - tokens) / self.rate
