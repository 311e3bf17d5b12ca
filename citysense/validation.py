"""Validation of readings against the metric catalog (pure: the caller passes ``now``).

Every rejection carries a stable ``reason`` token, counted by the services and shown to the
sender; values are never clipped. Reasons:

``unknown_kind``, ``unknown_metric``, ``metric_not_for_kind``, ``wrong_type``,
``not_finite``, ``not_integer``, ``out_of_range``, ``time_in_future``, ``time_too_old``,
``no_values``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from citysense.catalog import (
    DEFAULT_MAX_AGE_MS,
    KINDS,
    MAX_FUTURE_SKEW_MS,
    METRICS,
    metrics_of_kind,
)
from citysense.model import Reading, Value


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one value (or a whole reading, when ``metric`` is ``None``) was refused."""

    reason: str
    message: str
    metric: str | None = None

    def __str__(self) -> str:
        return self.message


def check_value(metric: str, value: object) -> Rejection | None:
    """Check one value against its metric's type and range; ``None`` when it is valid."""
    spec = METRICS.get(metric)
    if spec is None:
        return Rejection("unknown_metric", f"unknown metric {metric!r}", metric)
    if spec.type == "bool":
        if type(value) is not bool:
            return Rejection("wrong_type", f"{metric}: expected a boolean", metric)
        return None
    if type(value) is bool or not isinstance(value, int | float):
        return Rejection("wrong_type", f"{metric}: expected a number", metric)
    try:
        v = float(value)
    except OverflowError:  # an integer beyond any float
        v = math.inf
    if not math.isfinite(v):
        return Rejection("not_finite", f"{metric}: {value} is not a finite number", metric)
    assert spec.lo is not None and spec.hi is not None
    if not spec.lo <= v <= spec.hi:
        return Rejection(
            "out_of_range",
            f"{metric}: {value:g} outside {spec.lo:g}..{spec.hi:g} {spec.unit}".rstrip(),
            metric,
        )
    if spec.integer and not v.is_integer():
        return Rejection("not_integer", f"{metric}: {value} is not a whole number", metric)
    return None


def check_time(t_ms: int, now_ms: int, max_age_ms: int = DEFAULT_MAX_AGE_MS) -> Rejection | None:
    """Refuse a time more than 5 minutes ahead of ``now_ms`` or older than ``max_age_ms``."""
    if t_ms > now_ms + MAX_FUTURE_SKEW_MS:
        return Rejection(
            "time_in_future", f"time {t_ms} ms is {(t_ms - now_ms) // 1000} s in the future"
        )
    if t_ms < now_ms - max_age_ms:
        return Rejection("time_too_old", f"time {t_ms} ms is older than {max_age_ms // 1000} s")
    return None


def check_values(kind: str, values: Mapping[str, object]) -> list[Rejection]:
    """Check every value of a reading of ``kind``; an empty list means all are valid."""
    if kind not in KINDS:
        return [Rejection("unknown_kind", f"unknown device kind {kind!r}")]
    if not values:
        return [Rejection("no_values", "a reading needs at least one value")]
    allowed = metrics_of_kind(kind)
    problems: list[Rejection] = []
    for metric, value in values.items():
        if metric in METRICS and metric not in allowed:
            problems.append(
                Rejection("metric_not_for_kind", f"{metric} is not a metric of {kind}", metric)
            )
            continue
        problem = check_value(metric, value)
        if problem is not None:
            problems.append(problem)
    return problems


def validate_reading(
    reading: Reading, now_ms: int, max_age_ms: int = DEFAULT_MAX_AGE_MS
) -> list[Rejection]:
    """Every reason ``reading`` cannot be stored; an empty list means it is valid."""
    problems = check_values(reading.kind, reading.values)
    late = check_time(reading.t, now_ms, max_age_ms)
    if late is not None:
        problems.append(late)
    return problems


def typed_values(values: Mapping[str, Value]) -> dict[str, Value]:
    """Values coerced to their catalog type (ints become floats); call after validation."""
    return {k: (v if METRICS[k].type == "bool" else float(v)) for k, v in values.items()}
