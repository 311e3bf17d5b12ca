"""Who may read and write which MQTT topics (INTERFACES.md section 10.1): one table.

A client is a *role* -- a gateway (its user name is its gateway id), ``ingest``, ``alerts`` or
``operator`` -- and each role has topic patterns it may read (subscribe to) and write
(publish on). The embedded broker enforces :func:`acl_of` directly; a Mosquitto deployment
gets the same rules as an ``acl_file`` from :func:`mosquitto_acl`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from citysense.model import INGEST_SHARED_SUBSCRIPTION, topic_root

INGEST, ALERTS, OPERATOR = "ingest", "alerts", "operator"
#: the user names of the services that are not gateways
SERVICE_USERS = (INGEST, ALERTS, OPERATOR)

_ANY_GATEWAY = topic_root("+")
_ALARMS = f"{topic_root('alarms')}/#"


@dataclass(frozen=True, slots=True)
class Acl:
    """Topic patterns (MQTT filters; ``$share/…`` for shared subscriptions) by access."""

    read: tuple[str, ...]
    write: tuple[str, ...]


def acl_of(user: str) -> Acl:
    """The rules of ``user``: a service name of :data:`SERVICE_USERS`, else a gateway id."""
    if user == INGEST:
        return Acl(
            read=(INGEST_SHARED_SUBSCRIPTION, f"{_ANY_GATEWAY}/up"),
            write=(f"{_ANY_GATEWAY}/stored",),
        )
    if user == ALERTS:
        return Acl(read=(f"{_ANY_GATEWAY}/status",), write=(_ALARMS,))
    if user == OPERATOR:
        return Acl(
            read=(f"{_ANY_GATEWAY}/ack", f"{_ANY_GATEWAY}/status"),
            write=(f"{_ANY_GATEWAY}/down",),
        )
    root = topic_root(user)
    return Acl(
        read=(f"{root}/stored", f"{root}/down"),
        write=(f"{root}/up", f"{root}/status", f"{root}/ack"),
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
