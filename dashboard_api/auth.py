"""Who may call what: bearer keys with roles, deny by default, and a rate limit per key.

* Keys come from ``--api-keys-file`` (digests only, named; SIGHUP reloads it) and from
  ``--api-keys KEY:ROLE,...``; only SHA-256 digests are kept, and a presented key is compared
  with every digest in constant time. The key id logged is the key's name (or a digest prefix).
* Failed authentication is limited per client address: over :data:`FAILED_AUTH_PER_MINUTE`
  failures a minute, 429 with ``Retry-After`` -- checked before any key is hashed or compared.
* Every route declares the role it needs in ``openapi_extra["x-role"]`` (``public``,
  ``viewer`` or ``operator``); :func:`authorize`, an app-wide dependency, refuses any route
  that declares none -- a route added without a decision is closed, not open.
* ``operator`` may do everything; ``viewer`` reads district-level data only (no
  ``/devices``, no ``device=``, no ``group_by=device``): routes check
  :meth:`Principal.require_operator` for those.
* With no keys configured the API is open (every caller is an operator); a warning is logged
  at start.
* Rate limit: a token bucket per key (per client address when open) of ``rate_limit``
  requests per minute; over it, 429 with ``Retry-After``. Public routes (``/health``, the
  page) are not limited, so health checks stay answered under load.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from citysense.apikeys import StoredKey

Role = Literal["viewer", "operator"]
ROLE_KEY = "x-role"
_RANK = {"public": 0, "viewer": 1, "operator": 2}


def role(required: Literal["public", "viewer", "operator"]) -> dict[str, object]:
    """``openapi_extra`` declaring the role a route needs."""
    return {ROLE_KEY: required}


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    key_id: str  #: short digest prefix (or ``open:<address>``), safe to log

    def require_operator(self, what: str) -> None:
        if self.role != "operator":
            raise HTTPException(403, f"{what}: viewers see district-level data only")


#: Failed authentications per client address and minute before 429 (bursts up to this many).
FAILED_AUTH_PER_MINUTE = 30


class KeyStore:
    """API keys by SHA-256 digest; lookups compare against every digest in constant time."""

    def __init__(self, keys: Mapping[str, str], stored: Sequence[StoredKey] = ()) -> None:
        self._digests: list[tuple[bytes, Role, str]] = [
            (d := hashlib.sha256(k.encode()).digest(), r, d.hex()[:8])  # type: ignore[misc]
            for k, r in keys.items()
        ]
        self._digests += [
            (bytes.fromhex(k.sha256), k.role, k.name)  # type: ignore[misc]
            for k in stored
        ]

    @property
    def open(self) -> bool:
        return not self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def lookup(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: Principal | None = None
        for stored, r, key_id in self._digests:
            if hmac.compare_digest(stored, digest):
                found = Principal(r, key_id)
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

    def wait(self, key: str) -> float:
        """Like :meth:`take` without taking: 0 if a request would be allowed now."""
        entry = self._buckets.get(key)
        if entry is None:
            return 0.0
        tokens, last = entry
        tokens = min(self.capacity, tokens + (self._clock() - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


def _refuse_auth(request: Request, detail: str) -> HTTPException:
    """A 401, counted against the client's address."""
    state = request.app.state
    state.auth_failures.take(_address(request))
    state.metrics.auth_failed += 1
    return HTTPException(401, detail, {"WWW-Authenticate": "Bearer"})


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


_bearer = HTTPBearer(auto_error=False, description="an API key from --api-keys")


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """App-wide dependency: the caller's principal, or 401/403/429."""
    route = request.scope.get("route")
    extra = getattr(route, "openapi_extra", None) or {}
    needed = extra.get(ROLE_KEY)
    if needed not in _RANK:
        raise HTTPException(403, "no access rule for this route")
    state = request.app.state
    keys: KeyStore = state.keys
    if needed == "public":
        # a public route answers more to a caller who shows a valid key (the health detail)
        principal = Principal("viewer", "public")
        if keys.open:
            principal = Principal("operator", f"open:{_address(request)}")
        elif credentials is not None and not state.auth_failures.wait(_address(request)):
            found = keys.lookup(credentials.credentials)
            if found is None:  # a wrong key counts here too: /health must not be an oracle
                state.auth_failures.take(_address(request))
                state.metrics.auth_failed += 1
            else:
                principal = found
        request.state.principal = principal
        return principal
    if keys.open:
        principal = Principal("operator", f"open:{_address(request)}")
    else:
        # before any key work: an address that keeps failing is told to wait
        blocked = state.auth_failures.wait(_address(request))
        if blocked > 0:
            state.metrics.auth_limited += 1
            raise HTTPException(
                429,
                "too many failed authentications",
                {"Retry-After": str(max(1, math.ceil(blocked)))},
            )
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise _refuse_auth(request, "Authorization: Bearer <key> required")
        found = keys.lookup(credentials.credentials)
        if found is None:
            raise _refuse_auth(request, "unknown API key")
        principal = found
    request.state.principal = principal
    wait = state.limiter.take(principal.key_id)
    if wait > 0:
        state.metrics.rate_limited += 1
        raise HTTPException(
            429, "rate limit exceeded", {"Retry-After": str(max(1, math.ceil(wait)))}
        )
    if _RANK[principal.role] < _RANK[needed]:
        raise HTTPException(403, f"this needs the {needed} role")
    return principal


#: The caller, for routes that look at the role (FastAPI runs :func:`authorize` once).
CurrentPrincipal = Annotated[Principal, Depends(authorize)]
