"""Intake: an uplink's bytes -> validated, attributed readings (pure, no I/O, no clock).

Shared by the CoAP site and the serial sources. Invariant: an uplink is accepted whole or
refused whole -- one bad record refuses the uplink, and :func:`Intake.readings_of_uplink`
then raises :class:`UplinkRefused` carrying the CoAP answer code class (``bad_request``,
``forbidden``, ``unsupported_format``, ``too_large``) and a short diagnostic, so nothing of
it is stored. A record without a time gets the receive time (``now_ms`` from the caller).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from citysense.catalog import DEFAULT_MAX_AGE_MS, HEALTH_METRICS, METRICS
from citysense.errors import InputError, SenmlError
from citysense.model import DEVICE_ID_RE, Reading
from citysense.registry import Device
from citysense.senml import (
    CF_SENML_CBOR,
    CF_SENML_JSON,
    SenmlLimits,
    decode_senml,
    fast_json_records,
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


def _check_unit(name: str, unit: str | None) -> None:
    if unit is None:
        return
    metric = name.rpartition(":")[2]
    spec = METRICS.get(metric)
    if spec is not None and spec.senml_unit is not None and unit != spec.senml_unit:
        raise SenmlError(f"{metric}: unit {unit!r} is not {spec.senml_unit!r}", "wrong_unit")
