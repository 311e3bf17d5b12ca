"""Who may read and write which MQTT topics (INTERFACES.md section 10.1): one table.

A client is a *role* -- a gateway (its user name is its gateway id), ``ingest``, ``alerts`` or
``operator`` -- and each role has topic patterns it may read (subscribe to) and write
(publish on). The embedded broker enforces :func:`acl_of` directly; a Mosquitto deployment
gets the same rules as an ``acl_file`` from :func:`mosquitto_acl`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from citysense.topics import (
    ACK,
    ALARMS,
    DOWN,
    INGEST_SHARED_SUBSCRIPTION,
    STATUS,
    STATUS_SUBSCRIPTION,
    STORED,
    UP,
    topic,
)

INGEST, ALERTS, OPERATOR = "ingest", "alerts", "operator"
#: the user names of the services that are not gateways
SERVICE_USERS = (INGEST, ALERTS, OPERATOR)


@dataclass(frozen=True, slots=True)
class Acl:
    """Topic patterns (MQTT filters; ``$share/…`` for shared subscriptions) by access."""

    read: tuple[str, ...]
    write: tuple[str, ...]


def acl_of(user: str) -> Acl:
    """The rules of ``user``: a service name of :data:`SERVICE_USERS`, else a gateway id."""
    if user == INGEST:
        return Acl(read=(INGEST_SHARED_SUBSCRIPTION, topic("+", UP)), write=(topic("+", STORED),))
    if user == ALERTS:
        return Acl(read=(STATUS_SUBSCRIPTION,), write=(f"{ALARMS}/#",))
    if user == OPERATOR:
        return Acl(read=(topic("+", ACK), STATUS_SUBSCRIPTION), write=(topic("+", DOWN),))
    return Acl(
        read=(topic(user, STORED), topic(user, DOWN)),
        write=(topic(user, UP), topic(user, STATUS), topic(user, ACK)),
    )


def mosquitto_acl(users: Iterable[str]) -> str:
    """The rules of ``users`` in Mosquitto's ``acl_file`` syntax."""
    blocks = []
    for user in users:
        acl = acl_of(user)
        lines = [f"user {user}"]
        lines += [f"topic read {p}" for p in acl.read]
        lines += [f"topic write {p}" for p in acl.write]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
