"""Downlink for sleeping devices: commands from ``.../down`` wait (durably) for an uplink.

A device listens only briefly after each uplink, so a command is delivered in the CoAP
response to that device's next uplink, as SenML JSON (Content-Format 110)::

    [{"bn":"<device>:","n":"cmd","vs":"<command>"},
     {"n":"cmd_id","vs":"<id>"},
     {"n":"cmd_args","vs":"<args as JSON>"},
     {"n":"cmd_expires","v":<epoch s>}]

Every state change is reported on ``.../ack``: ``queued`` (held in the outbox database),
``delivered`` (sent in an uplink's response), ``expired`` (deadline passed first),
``rejected`` (malformed, or a device not in the registry). ``delivered`` means handed to the
device in a response; CoAP gives no proof that the response arrived.

:func:`parse_command` is pure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from citysense.errors import InputError
from citysense.model import DEVICE_ID_RE
from citysense.senml import CF_SENML_JSON, encode_senml
from edge.outbox import Command

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 512


def parse_command(payload: bytes) -> Command:
    """A ``.../down`` message; raises :class:`InputError` with a reason."""
    if len(payload) > 4096:
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
    cmd = Command(cid, device, command, args, expires)
    if len(response_payload(cmd)) > MAX_COMMAND_BYTES:
        raise InputError("command too large for a CoAP response", "too_large")
    return cmd


def response_payload(cmd: Command) -> bytes:
    """The command as the SenML JSON pack carried in an uplink's response."""
    return encode_senml(
        [
            {"bn": f"{cmd.device}:", "n": "cmd", "vs": cmd.command},
            {"n": "cmd_id", "vs": cmd.id},
            {"n": "cmd_args", "vs": json.dumps(cmd.args, separators=(",", ":"))},
            {"n": "cmd_expires", "v": cmd.expires / 1000},
        ],
        CF_SENML_JSON,
    )


def ack_payload(cid: str, device: str, state: str, at_ms: int) -> bytes:
    return json.dumps(
        {"id": cid, "device": device, "state": state, "at": at_ms}, separators=(",", ":")
    ).encode()


def command_ref(payload: bytes) -> tuple[str, str]:
    """(id, device) of an unparseable command, as far as they can be read, for its ack."""
    try:
        data = json.loads(payload)
    except ValueError:
        return "", ""
    if not isinstance(data, Mapping):
        return "", ""
    cid, device = data.get("id"), data.get("device")
    return (cid if isinstance(cid, str) else "", device if isinstance(device, str) else "")
