"""Strict JSON (RFC 8259) for every wire codec: no NaN or Infinity either way, compact output.

Python's :mod:`json` accepts ``NaN``, ``Infinity`` and ``-Infinity`` by default; no peer of
citysense may send them (SenML, the envelope, the small MQTT messages), so every decoder uses
:func:`reject_constant` and every encoder :func:`dumps`.
"""

from __future__ import annotations

import json


def reject_constant(name: str) -> float:
    """``parse_constant`` hook: ``NaN``/``Infinity`` are not JSON numbers (a ValueError)."""
    raise ValueError(f"{name} is not a valid JSON number")


#: A decoder refusing the non-standard constants (build it once: options cost per call).
DECODER = json.JSONDecoder(parse_constant=reject_constant)

#: Compact, standard JSON text of a value (ValueError on a non-finite float).
dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
