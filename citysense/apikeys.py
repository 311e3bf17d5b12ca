"""API keys and roles shared by every HTTP service (the operator API and ``citysense alerts``).

Pure: no web framework here. Only SHA-256 digests of the keys are kept, and a presented key is
compared with every digest in constant time. Roles rank ``public`` < ``viewer`` < ``operator``;
a route declares the role it needs in its ``openapi_extra`` under :data:`ROLE_KEY`.

At rest (INTERFACES §10.3) keys live in a TOML file of digests, never the keys;
``citysense api keys add`` appends one ``[[key]]`` table per key::

    [[key]]
    name = "control-room"
    role = "operator"
    sha256 = "<hex SHA-256 of the key>"
    created = "2026-12-05T02:00:00Z"

A key is ``KEY_BYTES`` random bytes, URL-safe base64: with that much entropy one SHA-256 is
as strong as a slow password hash, and lets every request be checked in constant time. The
key id logged for a stored key is its name.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from citysense.errors import ConfigError

Role = Literal["viewer", "operator"]
ROLE_KEY = "x-role"
RANK = {"public": 0, "viewer": 1, "operator": 2}

#: On every HTTP response of every service (INTERFACES §10.3): only our own scripts, never in
#: a frame, no content sniffing, no referrer leaking a URL with parameters.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def role(required: Literal["public", "viewer", "operator"]) -> dict[str, object]:
    """``openapi_extra`` declaring the role a route needs."""
    return {ROLE_KEY: required}


def required_role(route: object) -> str | None:
    """The role ``route`` declares (:func:`role`), or ``None`` when it declares no known one:
    such a route is closed to every caller (deny by default)."""
    needed = (getattr(route, "openapi_extra", None) or {}).get(ROLE_KEY)
    return needed if needed in RANK else None


def retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header of a refusal that ends in ``seconds``: whole, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


@dataclass(frozen=True, slots=True)
class KeyMatch:
    role: Role
    key_id: str  #: short digest prefix, safe to log


class KeyStore:
    """API keys by SHA-256 digest; lookups compare against every digest in constant time.

    ``keys`` are given keys (``KEY: role``; id: a digest prefix), ``stored`` the entries of a
    keys file (id: the name)."""

    def __init__(self, keys: Mapping[str, str], stored: Sequence[StoredKey] = ()) -> None:
        self._digests: list[tuple[bytes, Role, str]] = []
        for k, r in keys.items():
            digest = hashlib.sha256(k.encode()).digest()
            self._digests.append((digest, r, digest.hex()[:8]))  # type: ignore[arg-type]
        for entry in stored:
            self._digests.append((bytes.fromhex(entry.sha256), entry.role, entry.name))  # type: ignore[arg-type]

    @property
    def open(self) -> bool:
        return not self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def lookup(self, presented: str) -> KeyMatch | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: KeyMatch | None = None
        for stored, r, key_id in self._digests:
            if hmac.compare_digest(stored, digest):
                found = KeyMatch(r, key_id)
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


# --------------------------------------------------------------------------- the keys file

KEY_BYTES = 32
ROLES = ("operator", "viewer")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One key as stored: its name (logged as the key id), role and digest."""

    name: str
    role: str
    sha256: str


def new_key() -> str:
    """A fresh API key: ``KEY_BYTES`` random bytes, URL-safe text."""
    return secrets.token_urlsafe(KEY_BYTES)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_entry(name: str, role: str, key: str, created: str) -> str:
    """The TOML table that stores ``key`` (its digest only)."""
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"--name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    if role not in ROLES:
        raise ConfigError(f"--role must be one of {', '.join(ROLES)}")
    return (
        f'\n[[key]]\nname = "{name}"\nrole = "{role}"\n'
        f'sha256 = "{key_digest(key)}"\ncreated = "{created}"\n'
    )


def parse_keys_file(text: str, source: str) -> list[StoredKey]:
    """The keys of a keys file; :class:`ConfigError` naming what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    entries = data.get("key", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: 'key' must be an array of tables ([[key]])")
    keys: list[StoredKey] = []
    names: set[str] = set()
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: key {i} is not a table")
        name, role, digest = entry.get("name"), entry.get("role"), entry.get("sha256")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in names:
            raise ConfigError(f"{source}: key {i} needs a unique name")
        if role not in ROLES:
            raise ConfigError(f"{source}: key {name!r}: role must be one of {', '.join(ROLES)}")
        if not isinstance(digest, str) or not _HEX_RE.fullmatch(digest):
            raise ConfigError(f"{source}: key {name!r}: sha256 must be 64 lowercase hex digits")
        names.add(name)
        keys.append(StoredKey(name, str(role), digest))
    return keys


def load_keys_file(path: str) -> list[StoredKey]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"--api-keys-file {path}: {exc.strerror or exc}") from exc
    return parse_keys_file(text, f"--api-keys-file {path}")
