"""Users, hashed passwords and topic access for the embedded broker.

The model is the Mosquitto deployment's (INTERFACES.md section 10.1): a client authenticates
with a user name and password (the broker keeps only a salted PBKDF2-SHA512 hash), may publish
only where its :class:`~citysense.mqtt_acl.Acl` lets it write and subscribe only to filters
its read patterns cover, and a client id belongs to the user who first used it.
:func:`generate_demo_users` makes per-run credentials for ``citysense demo``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from citysense.mqtt_acl import SERVICE_USERS, Acl, acl_of
from mqtt_broker.topics import split_shared, topic_matches

#: PBKDF2 rounds: enough to make a stolen hash slow to attack, cheap for a CONNECT
ITERATIONS = 20_000


@dataclass(frozen=True, slots=True)
class User:
    """One broker user: a password hash and the topics it may touch."""

    name: str
    salt: bytes
    digest: bytes
    acl: Acl
    iterations: int = ITERATIONS

    def __repr__(self) -> str:  # never the hash
        return f"User({self.name!r})"

    def verify(self, password: bytes) -> bool:
        got = hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations)
        return hmac.compare_digest(got, self.digest)

    def may_publish(self, topic: str) -> bool:
        levels = topic.split("/")
        return any(
            not p.startswith("$share/") and topic_matches(tuple(p.split("/")), levels)
            for p in self.acl.write
        )

    def may_subscribe(self, flt: str) -> bool:
        return any(covers(p, flt) for p in self.acl.read)


def make_user(name: str, password: str, acl: Acl | None = None) -> User:
    """A user with a fresh salt; ``acl`` defaults to the role table's (:func:`acl_of`)."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return User(name, salt, digest, acl if acl is not None else acl_of(name))


def covers(pattern: str, flt: str) -> bool:
    """Whether every topic ``flt`` can match is matched by ``pattern`` (both MQTT filters).

    A shared subscription (``$share/g/f``) is covered only by a pattern for the same group.
    """
    p_group, p_filter = split_shared(pattern)
    f_group, f_filter = split_shared(flt)
    if p_group != f_group:
        return False
    p_levels, f_levels = p_filter.split("/"), f_filter.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(f_levels):
            return False
        f = f_levels[i]
        if f == "#" or (p != "+" and (f == "+" or f != p)):
            return False
    return len(p_levels) == len(f_levels)


@dataclass(frozen=True, slots=True)
class DemoCredentials:
    """Per-run users for the broker and the plain passwords for its clients."""

    users: Mapping[str, User]  #: for ``BrokerConfig(users=...)``
    passwords: Mapping[str, str]  #: user name -> password, handed to the clients only

    def __repr__(self) -> str:  # never the passwords
        return f"DemoCredentials({sorted(self.users)})"


def generate_demo_users(gateway_ids: Iterable[str]) -> DemoCredentials:
    """A random password (32 bytes of entropy) for each gateway id, ``ingest``, ``alerts`` and
    ``operator``, with the role ACLs."""
    names = [*dict.fromkeys(gateway_ids), *SERVICE_USERS]
    passwords = {name: secrets.token_urlsafe(32) for name in names}
    return DemoCredentials({n: make_user(n, p) for n, p in passwords.items()}, passwords)
