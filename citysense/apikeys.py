"""API keys at rest: a TOML file of key digests, never the keys (INTERFACES §10.3).

``citysense api keys add`` appends one ``[[key]]`` table per key::

    [[key]]
    name = "control-room"
    role = "operator"
    sha256 = "<hex SHA-256 of the key>"
    created = "2026-12-05T02:00:00Z"

A key is ``KEY_BYTES`` random bytes, URL-safe base64: with that much entropy one SHA-256 is
as strong as a slow password hash, and lets every request be checked in constant time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import tomllib
from dataclasses import dataclass

from citysense.errors import ConfigError

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
