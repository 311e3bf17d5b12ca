"""Parsing of the API's time and duration parameters; errors name the parameter.

* times: RFC 3339 with an offset (``2026-03-10T12:00:00Z``) or epoch milliseconds; output is
  always RFC 3339 UTC with a ``Z``;
* durations: an integer and a unit, ``ns us ms s m h d w`` (``5m``, ``1h``, ``1d``).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

from citysense.errors import InputError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_MS = 0  #: 1970-01-01
MAX_MS = 7_258_118_400_000  #: 2200-01-01
_DURATION_RE = re.compile(r"(\d{1,12})(ns|us|µs|ms|s|m|h|d|w)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 604_800_000_000_000,
}


class ParameterError(InputError):
    """A bad request parameter: answered 400 with a detail naming it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}", "bad_parameter")
        self.parameter = parameter


def parse_time(text: str, name: str) -> int:
    """RFC 3339 (with offset) or epoch ms -> epoch ms."""
    text = text.strip()
    if re.fullmatch(r"-?\d{1,16}", text):
        ms = int(text)
    else:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ParameterError(
                name, f"{text[:40]!r} is neither RFC 3339 nor epoch milliseconds"
            ) from None
        if dt.tzinfo is None:
            raise ParameterError(name, "an RFC 3339 time needs an offset, e.g. Z")
        ms = (dt - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding
    if not MIN_MS <= ms < MAX_MS:
        raise ParameterError(name, "time out of range (1970 to 2200)")
    return ms


def parse_duration(text: str, name: str, *, min_ms: int = 1000, max_ms: int | None = None) -> int:
    """``5m`` -> 300000 ms, within [min_ms, max_ms]."""
    m = _DURATION_RE.fullmatch(text.strip())
    if not m:
        raise ParameterError(name, f"{text[:40]!r} is not a duration like 30s, 5m, 1h, 1d")
    ns = int(m.group(1)) * _UNIT_NS[m.group(2)]
    if ns < min_ms * 1_000_000:
        raise ParameterError(name, f"must be at least {format_duration(min_ms)}")
    ms = ns // 1_000_000
    if max_ms is not None and ms > max_ms:
        raise ParameterError(name, f"must be at most {format_duration(max_ms)}")
    return ms


def format_duration(ms: int) -> str:
    for unit, size in (
        ("w", 604_800_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@functools.lru_cache(maxsize=65536)
def rfc3339(ms: int) -> str:
    dt = _EPOCH + timedelta(milliseconds=ms)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
