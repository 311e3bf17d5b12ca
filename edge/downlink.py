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

from citysense.errors import InputError
from citysense.senml import CF_SENML_JSON, encode_senml
from citysense.topics import Command, decode_down

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 512


def parse_command(payload: bytes) -> Command:
    """A ``.../down`` message that fits a CoAP response; raises :class:`InputError`."""
    cmd = decode_down(payload)
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
