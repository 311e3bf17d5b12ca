"""Intake: an uplink's bytes -> validated, attributed readings (pure, no I/O, no clock).

Shared by the CoAP site and the serial sources. Invariant: an uplink is accepted whole or
refused whole -- one bad record refuses the uplink, and :func:`Intake.readings_of_uplink`
then raises :class:`UplinkRefused` carrying the CoAP answer code class (``bad_request``,
``forbidden``, ``unsupported_format``, ``too_large``) and a short diagnostic, so nothing of
it is stored. A record without a time gets the receive time (``now_ms`` from the caller).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from citysense.catalog import DEFAULT_MAX_AGE_MS, HEALTH_METRICS, METRICS
from citysense.errors import InputError, SenmlError
from citysense.model import DEVICE_ID_RE, Reading
from citysense.registry import Device
from citysense.senml import (
    CF_SENML_CBOR,
    CF_SENML_JSON,
    DEFAULT_LIMITS,
    RELATIVE_TIME_LIMIT,
    SenmlLimits,
    SenmlRecord,
    decode_senml,
    to_samples,
)
from citysense.validation import check_time, check_values, typed_values

#: Refusal classes; each maps to one CoAP answer code (INTERFACES.md section 3).
BAD_REQUEST = "bad_request"
FORBIDDEN = "forbidden"
UNSUPPORTED_FORMAT = "unsupported_format"
TOO_LARGE = "too_large"


class UplinkRefused(InputError):
    """The whole uplink is refused; ``answer`` is one of the refusal classes above."""

    def __init__(self, message: str, reason: str, answer: str = BAD_REQUEST) -> None:
        super().__init__(message, reason)
        self.answer = answer


@dataclass(frozen=True, slots=True)
class Intake:
    """Turns uplinks into readings of registered devices, validated against the catalog."""

    registry: Mapping[str, Device]
    max_age_ms: int = DEFAULT_MAX_AGE_MS
    max_bytes: int = 1024

    def readings_of_uplink(
        self, payload: bytes, content_format: int | None, now_ms: int
    ) -> list[Reading]:
        """Every reading of one uplink, or :class:`UplinkRefused` for the whole of it."""
        if content_format not in (CF_SENML_JSON, CF_SENML_CBOR):
            raise UplinkRefused(
                f"content format {None if content_format is None else int(content_format)} "
                "is not 110 (senml+json) or 112 (senml+cbor)",
                "unsupported_format",
                UNSUPPORTED_FORMAT,
            )
        if len(payload) > self.max_bytes:
            raise UplinkRefused(
                f"{len(payload)} bytes exceed {self.max_bytes}", "too_large", TOO_LARGE
            )
        try:
            records = None
            if content_format == CF_SENML_JSON:
                records = fast_json_records(payload, now_ms / 1000)
            if records is None:
                records = decode_senml(
                    payload, content_format, now_ms / 1000, SenmlLimits(max_bytes=self.max_bytes)
                )
            for rec in records:
                _check_unit(rec.name, rec.unit)
            samples = to_samples(records)
        except SenmlError as exc:
            raise UplinkRefused(str(exc), exc.reason) from exc
        if not samples:
            raise UplinkRefused("an uplink needs at least one record", "no_values")
        readings: list[Reading] = []
        for (device_id, t_ms), values in samples.items():
            device = self.registry.get(device_id)
            if device is None:
                raise UplinkRefused(f"unknown device {device_id[:96]}", "unknown_device", FORBIDDEN)
            problems = check_values(device.kind, values)
            late = check_time(t_ms, now_ms, self.max_age_ms)
            if late is not None:
                problems.append(late)
            if problems:
                raise UplinkRefused(f"{device_id}: {problems[0].message}", problems[0].reason)
            readings.append(
                Reading(
                    device_id,
                    device.kind,
                    device.district,
                    device.site,
                    t_ms,
                    typed_values(values),  # type: ignore[arg-type]
                )
            )
        return readings

    def health_reading(
        self, device_id: str, t_ms: int, values: Mapping[str, float], now_ms: int
    ) -> Reading | None:
        """A ``device_health`` reading of ``device_id`` from radio figures; ``None`` if none.

        Figures outside the catalog are left out; one out of range drops only itself.
        Raises :class:`UplinkRefused` (``forbidden``) for a device not in the registry.
        """
        device = self.registry.get(device_id)
        if device is None or not DEVICE_ID_RE.fullmatch(device_id):
            raise UplinkRefused(f"unknown device {device_id[:96]}", "unknown_device", FORBIDDEN)
        kept: dict[str, float | bool] = {}
        for metric, value in values.items():
            if metric in HEALTH_METRICS and not check_values(device.kind, {metric: value}):
                kept[metric] = value
        if not kept or check_time(t_ms, now_ms, self.max_age_ms) is not None:
            return None
        return Reading(
            device_id, device.kind, device.district, device.site, t_ms, typed_values(kept)
        )


_FAST_KEYS = frozenset({"bn", "bt", "bu", "n", "u", "v", "vb", "t"})
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")


def _reject_constant(name: str) -> float:
    raise ValueError(name)


# one decoder for every call: json.loads with options builds a new one each time
_plain_decoder = json.JSONDecoder(object_pairs_hook=list, parse_constant=_reject_constant)


def fast_json_records(
    payload: bytes, now: float, limits: SenmlLimits = DEFAULT_LIMITS
) -> list[SenmlRecord] | None:
    """The records of a plain SenML JSON pack, or ``None`` to let :func:`decode_senml` decide.

    The uplinks devices send are plain packs: base name and time, names, numbers or booleans,
    units. For those this returns exactly what :func:`citysense.senml.decode_senml` returns
    (a test holds the two side by side), at a fraction of the cost: JSON is parsed by the C
    decoder and only the fields a plain pack uses are resolved. Anything else -- another
    field, a wrong type, a duplicate key, NaN, a bad name, too many records -- returns
    ``None``, and the full decoder accepts it or explains the refusal.
    """
    try:
        data = _plain_decoder.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if type(data) is not list or len(data) > limits.max_records:
        return None
    bn, bu, bt = "", None, 0.0
    out: list[SenmlRecord] = []
    for pairs in data:
        if type(pairs) is not list:
            return None
        rec: dict[str, object] = {}
        for pair in pairs:
            if type(pair) is not tuple or pair[0] in rec or pair[0] not in _FAST_KEYS:
                return None
            rec[pair[0]] = pair[1]
        for key in ("bn", "bu", "n", "u"):
            text = rec.get(key)
            if key in rec and (type(text) is not str or len(text) > limits.max_string):
                return None
        for key in ("bt", "t", "v"):
            number = rec.get(key)
            if key in rec and (type(number) not in (int, float) or not math.isfinite(number)):  # type: ignore[arg-type]
                return None
        if "bn" in rec:
            bn = rec["bn"]  # type: ignore[assignment]
        if "bu" in rec:
            bu = rec["bu"]
        if "bt" in rec:
            bt = float(rec["bt"])  # type: ignore[arg-type]
        name = bn + (rec.get("n") or "")  # type: ignore[operator]
        if not name or len(name) > limits.max_string or not _NAME_RE.fullmatch(name):
            return None
        time = bt + float(rec.get("t") or 0.0)  # type: ignore[arg-type]
        if time < RELATIVE_TIME_LIMIT:
            time += now
        value: float | bool
        if "v" in rec and "vb" not in rec:
            value = 0.0 + float(rec["v"])  # type: ignore[arg-type]
        elif "vb" in rec and "v" not in rec and type(rec["vb"]) is bool:
            value = bool(rec["vb"])
        else:
            return None
        out.append(SenmlRecord(name, time, value, rec.get("u") or bu))  # type: ignore[arg-type]
    return out


def _check_unit(name: str, unit: str | None) -> None:
    if unit is None:
        return
    metric = name.rpartition(":")[2]
    spec = METRICS.get(metric)
    if spec is not None and spec.senml_unit is not None and unit != spec.senml_unit:
        raise SenmlError(f"{metric}: unit {unit!r} is not {spec.senml_unit!r}", "wrong_unit")
