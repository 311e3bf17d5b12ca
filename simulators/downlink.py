"""The downlinks a simulated device understands: a new reporting interval in a 2.04 answer."""

from __future__ import annotations

import json
import math

_INTERVAL_NAMES = ("report_interval", "set_report_interval", "set_interval", "interval")
_INTERVAL_ARGS = ("seconds", "report_interval", "interval", "interval_s", "value", "s")


def downlink_interval(payload: bytes) -> tuple[float | None, bool]:
    """(new report interval in s or None, whether any command was present) from a 2.04 payload.

    Understands a SenML JSON pack with ``{"n": "report_interval", "v": 600}`` (after the
    base name) or the gateway's command form ``{"n": "cmd", "vs": "report_interval"}``
    with ``{"n": "cmd_args", "vs": "{\\"seconds\\": 600}"}``. Anything else is ignored.
    """
    if not payload:
        return None, False
    try:
        pack = json.loads(payload)
    except ValueError:
        return None, True
    if not isinstance(pack, list):
        return None, True
    fields: dict[str, object] = {}
    for rec in pack:
        if not isinstance(rec, dict):
            continue
        name = str(rec.get("n", "")).rsplit(":", 1)[-1]
        for key in ("v", "vs", "vb"):
            if key in rec:
                fields[name] = rec[key]
    for name in _INTERVAL_NAMES:
        value = fields.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _valid_interval(float(value)), True
    command = fields.get("cmd")
    if isinstance(command, str) and command in _INTERVAL_NAMES:
        args: object = fields.get("cmd_args", "{}")
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            for key in _INTERVAL_ARGS:
                value = parsed.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return _valid_interval(float(value)), True
        elif isinstance(parsed, int | float) and not isinstance(parsed, bool):
            return _valid_interval(float(parsed)), True
    return None, bool(fields)


def _valid_interval(seconds: float) -> float | None:
    return seconds if math.isfinite(seconds) and 10.0 <= seconds <= 7 * 86400 else None
