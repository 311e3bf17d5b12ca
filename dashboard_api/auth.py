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

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from citysense.apikeys import RANK as _RANK
from citysense.apikeys import (
    ROLE_KEY,
    KeyStore,
    RateLimiter,
    Role,
    required_role,
    retry_after,
    role,
)

#: Failed authentications per client address and minute before 429 (bursts up to this many).
FAILED_AUTH_PER_MINUTE = 30

__all__ = [
    "FAILED_AUTH_PER_MINUTE",
    "ROLE_KEY",
    "CurrentPrincipal",
    "KeyStore",
    "Principal",
    "RateLimiter",
    "authorize",
    "role",
]


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    key_id: str  #: short digest prefix (or ``open:<address>``), safe to log

    def require_operator(self, what: str) -> None:
        if self.role != "operator":
            raise HTTPException(403, f"{what}: viewers see district-level data only")


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _refuse_auth(request: Request, detail: str) -> HTTPException:
    """A 401, counted against the client's address."""
    state = request.app.state
    state.auth_failures.take(_address(request))
    state.metrics.auth_failed += 1
    return HTTPException(401, detail, {"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False, description="an API key from --api-keys")


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """App-wide dependency: the caller's principal, or 401/403/429."""
    needed = required_role(request.scope.get("route"))
    if needed is None:
        raise HTTPException(403, "no access rule for this route")
    state = request.app.state
    keys: KeyStore = state.keys
    if needed == "public":
        # a public route answers more to a caller who shows a valid key (the health detail)
        principal = Principal("viewer", "public")
        if keys.open:
            principal = Principal("operator", f"open:{_address(request)}")
        elif credentials is not None and not state.auth_failures.wait(_address(request)):
            match = keys.lookup(credentials.credentials)
            if match is None:  # a wrong key counts here too: /health must not be an oracle
                state.auth_failures.take(_address(request))
                state.metrics.auth_failed += 1
            else:
                principal = Principal(match.role, match.key_id)
        request.state.principal = principal
        return principal
    if keys.open:
        principal = Principal("operator", f"open:{_address(request)}")
    else:
        # before any key work: an address that keeps failing is told to wait
        blocked = state.auth_failures.wait(_address(request))
        if blocked > 0:
            state.metrics.auth_limited += 1
            raise HTTPException(429, "too many failed authentications", retry_after(blocked))
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise _refuse_auth(request, "Authorization: Bearer <key> required")
        found = keys.lookup(credentials.credentials)
        if found is None:
            raise _refuse_auth(request, "unknown API key")
        principal = Principal(found.role, found.key_id)
    request.state.principal = principal
    wait = state.limiter.take(principal.key_id)
    if wait > 0:
        state.metrics.rate_limited += 1
        raise HTTPException(429, "rate limit exceeded", retry_after(wait))
    if _RANK[principal.role] < _RANK[needed]:
        raise HTTPException(403, f"this needs the {needed} role")
    return principal


#: The caller, for routes that look at the role (FastAPI runs :func:`authorize` once).
CurrentPrincipal = Annotated[Principal, Depends(authorize)]
