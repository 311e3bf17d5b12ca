"""The MQTT wire contract (INTERFACES.md section 5): topic names and the codecs of the small
messages on them.

One home for every topic string and every message shape that crosses the broker, used by the
gateway, the ingestor, the demo and the tests:

======== ================= ==============================================================
topic    direction         payload (codec here)
======== ================= ==============================================================
``up``   gateway -> cloud  the batch envelope (:mod:`citysense.envelope`);
                           content type :data:`UP_CONTENT_TYPE`
``status`` gateway -> cloud ``{"state","version","since"}`` (:func:`encode_status`)
``stored`` cloud -> gateway ``{"seq":[...]}`` (:func:`encode_stored`, :func:`decode_stored`)
``down`` cloud -> gateway  a command (:func:`decode_down`, :class:`Command`)
``ack``  gateway -> cloud  ``{"id","device","state","at"}`` (:func:`encode_ack`)
======== ================= ==============================================================

Everything here is pure (no I/O).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from citysense import strictjson
from citysense.errors import InputError
from citysense.model import DEVICE_ID_RE

PREFIX: Final = "citysense/v1"

UP: Final = "up"
STATUS: Final = "status"
STORED: Final = "stored"
DOWN: Final = "down"
ACK: Final = "ack"

#: The broker a service talks to when ``--mqtt`` is not given.
DEFAULT_MQTT: Final = "mqtt://127.0.0.1:1883"
#: How long the broker keeps a client's session (and its queued QoS 1 messages) while the
#: client is away, seconds (MQTT v5 Session Expiry Interval): a week.
SESSION_EXPIRY_S: Final = 7 * 24 * 3600

#: The shared subscription every ingestor uses.
INGEST_SHARED_SUBSCRIPTION: Final = f"$share/citysense-ingest/{PREFIX}/+/{UP}"
#: MQTT v5 content type of an envelope on ``…/up`` (INTERFACES.md sections 5 and 10.1).
#: every gateway's retained status (read by the alarms service)
STATUS_SUBSCRIPTION: Final = f"{PREFIX}/+/{STATUS}"
#: ``{ALARMS}/<id>`` holds each open alarm's state, retained
ALARMS: Final = f"{PREFIX}/alarms"

UP_CONTENT_TYPE: Final = "application/json"

#: The states a downlink command goes through, reported on ``…/ack``.
ACK_STATES: Final = ("queued", "delivered", "expired", "rejected")

#: Largest ``…/down`` message read at all, bytes.
MAX_DOWN_BYTES: Final = 4096

_dumps = strictjson.dumps


def topic_root(gateway: str) -> str:
    """``citysense/v1/{gateway}``, the root of a gateway's MQTT topics."""
    return f"{PREFIX}/{gateway}"


def topic(gateway: str, kind: str) -> str:
    """``citysense/v1/{gateway}/{kind}`` for one of :data:`UP` ... :data:`ACK`."""
    return f"{PREFIX}/{gateway}/{kind}"


def split_topic(name: str) -> tuple[str, str] | None:
    """``(gateway, kind)`` of ``citysense/v1/{gateway}/{kind}``, or ``None`` for another topic."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "citysense" or parts[1] != "v1":
        return None
    return parts[2], parts[3]


def gateway_of_topic(name: str) -> str | None:
    """The gateway id in ``citysense/v1/{gateway}/...``, or ``None`` for another topic."""
    parts = split_topic(name)
    return None if parts is None else parts[0]


# ---------------------------------------------------------------------------- status


def encode_status(state: str, version: str, since_ms: int) -> bytes:
    """The retained ``…/status`` message; ``state`` is ``online`` or ``offline``."""
    return _dumps({"state": state, "version": version, "since": since_ms}).encode()


# ---------------------------------------------------------------------------- stored


def encode_stored(seqs: Iterable[int]) -> bytes:
    """``{"seq":[…]}``, sorted and without repeats."""
    return _dumps({"seq": sorted(set(seqs))}).encode()


def decode_stored(payload: bytes) -> list[int] | None:
    """The seqs of a ``…/stored`` message, or ``None`` when it is malformed."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    seqs = data.get("seq") if isinstance(data, dict) else None
    if not isinstance(seqs, list) or not all(type(s) is int for s in seqs):
        return None
    return seqs


# ---------------------------------------------------------------------------- down / ack


@dataclass(frozen=True, slots=True)
class Command:
    """A downlink command (``…/down``), waiting for its device's next uplink."""

    id: str
    device: str
    command: str
    args: dict[str, object]
    expires: int


def decode_down(payload: bytes) -> Command:
    """A ``…/down`` message; raises :class:`InputError` with a reason."""
    if len(payload) > MAX_DOWN_BYTES:
        raise InputError("command message too large", "too_large")
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise InputError(f"not JSON: {exc}", "malformed") from exc
    if not isinstance(data, dict):
        raise InputError("a command is a JSON object", "malformed")
    cid, device, command = data.get("id"), data.get("device"), data.get("command")
    args = data.get("args", {})
    expires = data.get("expires")
    if not isinstance(cid, str) or not 0 < len(cid) <= 64:
        raise InputError("id must be a string of 1-64 characters", "bad_field")
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        raise InputError("device must be a device id", "bad_field")
    if not isinstance(command, str) or not 0 < len(command) <= 64:
        raise InputError("command must be a string of 1-64 characters", "bad_field")
    if not isinstance(args, dict):
        raise InputError("args must be an object", "bad_field")
    if type(expires) is not int or expires <= 0:
        raise InputError("expires must be epoch milliseconds", "bad_field")
    return Command(cid, device, command, args, expires)


def encode_down(cmd: Command) -> bytes:
    """The ``…/down`` message of ``cmd`` (what an operator tool publishes)."""
    return _dumps(
        {
            "id": cmd.id,
            "device": cmd.device,
            "command": cmd.command,
            "args": cmd.args,
            "expires": cmd.expires,
        }
    ).encode()


def down_ref(payload: bytes) -> tuple[str, str]:
    """(id, device) of an unparseable command, as far as they can be read, for its ack."""
    try:
        data = json.loads(payload)
    except ValueError:
        return "", ""
    if not isinstance(data, Mapping):
        return "", ""
    cid, device = data.get("id"), data.get("device")
    return (cid if isinstance(cid, str) else "", device if isinstance(device, str) else "")


def encode_ack(cid: str, device: str, state: str, at_ms: int) -> bytes:
    """The ``…/ack`` message: command ``cid`` reached ``state`` at ``at_ms``."""
    return _dumps({"id": cid, "device": device, "state": state, "at": at_ms}).encode()
