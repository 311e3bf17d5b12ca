"""The batch envelope codec (INTERFACES.md section 5): JSON on ``citysense/v1/{gw}/up``.

Pure. :func:`decode_batch` checks the envelope's structure and every field's syntax
(ids, integer times, value types) and raises :class:`~citysense.errors.EnvelopeError`
with a reason; catalog validation of each reading is a separate step
(:mod:`citysense.validation`), so one bad reading can be dead-lettered on its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from citysense.errors import EnvelopeError
from citysense.model import (
    DEVICE_ID_RE,
    ENVELOPE_VERSION,
    GATEWAY_ID_RE,
    PLACE_ID_RE,
    Batch,
    Reading,
)
from citysense.strictjson import reject_constant

MAX_ENVELOPE_BYTES = 256 * 1024
MAX_READINGS = 5000

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


#: The fields of a reading object in an envelope, in the order they are written.
READING_FIELDS: tuple[str, ...] = ("device", "kind", "district", "site", "t", "values")


def envelope_of(
    gateway: str, seq: int, sent: int, readings_json: str, *, v: int = ENVELOPE_VERSION
) -> bytes:
    """The envelope around readings already written as a JSON array of reading objects.

    The one place the envelope's own fields are written: :func:`encode_batch` uses it, and so
    does the gateway's outbox, which has SQLite write the readings array.
    """
    gw = gateway if GATEWAY_ID_RE.fullmatch(gateway) else _dumps(gateway)[1:-1]
    return (
        f'{{"v":{v},"gateway":"{gw}","seq":{seq},"sent":{sent},"readings":{readings_json}}}'
    ).encode()


def reading_to_dict(r: Reading) -> dict[str, object]:
    """A reading as its envelope object (fields in :data:`READING_FIELDS` order)."""
    return {name: getattr(r, name) for name in READING_FIELDS}


def encode_batch(batch: Batch) -> bytes:
    """The envelope as compact UTF-8 JSON; refuses a batch over the limits."""
    if len(batch.readings) > MAX_READINGS:
        raise EnvelopeError(f"{len(batch.readings)} readings exceed {MAX_READINGS}", "too_large")
    try:
        body = envelope_of(
            batch.gateway,
            batch.seq,
            batch.sent,
            _dumps([reading_to_dict(r) for r in batch.readings]),
            v=batch.v,
        )
    except ValueError as exc:  # NaN or Inf in values
        raise EnvelopeError(f"cannot encode batch: {exc}", "not_finite") from exc
    if len(body) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(
            f"envelope of {len(body)} bytes exceeds {MAX_ENVELOPE_BYTES}", "too_large"
        )
    return body


def _int(obj: Mapping[str, object], key: str, where: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if type(value) is not int:
        raise EnvelopeError(f"{where}{key} must be an integer", "bad_field")
    if value < minimum:
        raise EnvelopeError(f"{where}{key} must be >= {minimum}", "bad_field")
    return value


def _id(obj: Mapping[str, object], key: str, where: str, pattern: object) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):  # type: ignore[attr-defined]
        raise EnvelopeError(f"{where}{key} {value!r} is not a valid id", "bad_field")
    return value


def decode_reading(obj: object, index: int) -> Reading:
    """One reading object of an envelope, syntax-checked."""
    where = f"readings[{index}]."
    if not isinstance(obj, dict):
        raise EnvelopeError(f"readings[{index}] is not an object", "bad_field")
    values = obj.get("values")
    if not isinstance(values, dict) or not values:
        raise EnvelopeError(f"{where}values must be a non-empty object", "bad_field")
    for name, value in values.items():
        if not isinstance(value, int | float) or (len(name) > 64):
            raise EnvelopeError(
                f"{where}values.{name[:64]} must be a number or boolean", "bad_field"
            )
    kind = obj.get("kind")
    if not isinstance(kind, str) or len(kind) > 64:
        raise EnvelopeError(f"{where}kind must be a string", "bad_field")
    return Reading(
        device=_id(obj, "device", where, DEVICE_ID_RE),
        kind=kind,
        district=_id(obj, "district", where, PLACE_ID_RE),
        site=_id(obj, "site", where, PLACE_ID_RE),
        t=_int(obj, "t", where),
        values=values,
    )


def decode_batch(payload: bytes) -> Batch:
    """Parse and syntax-check an envelope; raises :class:`EnvelopeError` with a reason."""
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(
            f"envelope of {len(payload)} bytes exceeds {MAX_ENVELOPE_BYTES}", "too_large"
        )
    try:
        data = json.loads(payload, parse_constant=reject_constant)
    except EnvelopeError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise EnvelopeError(f"not valid JSON: {exc}", "malformed") from exc
    if not isinstance(data, dict):
        raise EnvelopeError("an envelope is a JSON object", "malformed")
    if data.get("v") != ENVELOPE_VERSION or type(data.get("v")) is not int:
        raise EnvelopeError(f"unsupported envelope version {data.get('v')!r}", "bad_version")
    readings = data.get("readings")
    if not isinstance(readings, list):
        raise EnvelopeError("readings must be an array", "bad_field")
    if len(readings) > MAX_READINGS:
        raise EnvelopeError(f"{len(readings)} readings exceed {MAX_READINGS}", "too_large")
    return Batch(
        gateway=_id(data, "gateway", "", GATEWAY_ID_RE),
        seq=_int(data, "seq", "", 1),
        sent=_int(data, "sent", ""),
        readings=tuple(decode_reading(r, i) for i, r in enumerate(readings)),
    )
