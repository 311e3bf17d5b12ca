"""InfluxDB line protocol: escaping and fast serialisation of :class:`~timeseries.schema.Point`.

Pure. Invariants:

* a point's series key (measurement and tags, escaped, tags sorted by key as InfluxDB keeps
  them) is built once per series and cached -- serialising a point is then one f-string;
* field values keep their catalog type: floats as Python's shortest round-trip ``repr``
  (``35.2``, ``1e+20``), booleans as ``true``/``false``; integers are written as floats, so a
  field never changes type;
* time is epoch milliseconds: write with ``precision=ms``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from citysense.catalog import (
    DEFAULT_MAX_AGE_MS,
    KINDS,
    MAX_FUTURE_SKEW_MS,
    METRICS,
    metrics_of_kind,
)
from citysense.envelope import MAX_ENVELOPE_BYTES, MAX_READINGS
from citysense.model import DEVICE_ID_RE, ENVELOPE_VERSION, GATEWAY_ID_RE, PLACE_ID_RE
from citysense.strictjson import DECODER
from timeseries.schema import TAG_KEYS, Point

try:  # an accelerator for the fast path; the stdlib decoder is the reference
    import orjson
except ImportError:  # pragma: no cover - a dependency; the fast path works without it
    orjson = None  # type: ignore[assignment]

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})

#: Tag positions in :data:`TAG_KEYS` order, visited in sorted key order.
_TAG_ORDER: tuple[tuple[int, str], ...] = tuple(
    sorted(((i, k) for i, k in enumerate(TAG_KEYS)), key=lambda item: item[1])
)
_SERIES_CACHE_LIMIT = 200_000


def escape_measurement(name: str) -> str:
    """A measurement name with commas, spaces and newlines escaped."""
    if "," in name or " " in name or "\n" in name:
        return name.translate(_MEASUREMENT_ESCAPES)
    return name


def escape_key(text: str) -> str:
    """A tag key, tag value or field key with commas, equals signs and spaces escaped."""
    # str.translate costs about a microsecond even when nothing changes; ids rarely need it.
    if "," in text or "=" in text or " " in text or "\n" in text:
        return text.translate(_KEY_ESCAPES)
    return text


def format_value(value: float | bool) -> str:
    """A field value: ``true``/``false`` or a float (never an integer field)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return repr(float(value))


_FIELD_KEYS: dict[str, str] = {name: escape_key(name) for name in METRICS}


def series_key(point: Point) -> str:
    """``measurement,tag=value,...`` with tags sorted by key; empty tag values left out."""
    parts = [escape_measurement(point.measurement)]
    for i, key in _TAG_ORDER:
        value = point.tags[i]
        if value:
            parts.append(f"{escape_key(key)}={escape_key(value)}")
    return ",".join(parts)


class LineSerializer:
    """Serialises points to line protocol, caching each series key (bounded)."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[tuple[str, tuple[str, ...]], str] = {}

    def line(self, point: Point) -> str:
        """One point as one line (without the newline)."""
        cache_key = (point.measurement, point.tags)
        key = self._keys.get(cache_key)
        if key is None:
            if len(self._keys) >= _SERIES_CACHE_LIMIT:
                self._keys.clear()
            key = self._keys[cache_key] = series_key(point)
        fk = _FIELD_KEYS
        fields = ",".join(
            f"{fk.get(name) or escape_key(name)}="
            + ("true" if v is True else "false" if v is False else repr(float(v)))
            for name, v in point.fields.items()
        )
        return f"{key} {fields} {point.t}"

    def lines(self, points: Iterable[Point]) -> str:
        """Points as newline-separated lines (a ``/write`` body)."""
        line = self.line
        return "\n".join([line(p) for p in points])


# ---------------------------------------------------------------------------- fast path

_DECODE = DECODER.decode


def _loads(payload: bytes) -> object:
    """The envelope as the stdlib decoder (``parse_constant`` rejecting NaN/Infinity) reads
    it, or an error. orjson reads strict RFC 8259 JSON; whatever it refuses (NaN, Infinity,
    1e400, lone surrogates, bad UTF-8, deep nesting) goes to the stdlib decoder, so every
    envelope decodes or fails exactly as before. One difference remains by design: orjson
    reads an integer beyond 64 bits as a float, which the fast path then declines (``seq``,
    ``sent`` and ``t`` must be ints; every metric's range is far inside 64 bits, checked
    below) -- the general path decides those, as it did.
    """
    if orjson is not None:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    return _DECODE(payload.decode())


#: metric -> (domain, is_bool, lo, hi, integer, "name="), for the fast path.
_SPECS: dict[str, tuple[str, bool, float, float, bool, str]] = {
    name: (
        m.domain,
        m.type == "bool",
        m.lo if m.lo is not None else 0.0,
        m.hi if m.hi is not None else 0.0,
        m.integer,
        f"{name}=",
    )
    for name, m in METRICS.items()
}
#: kind -> {metric: spec} of the metrics that kind may report.
_KIND_SPECS: dict[str, dict[str, tuple[str, bool, float, float, bool, str]]] = {
    kind: {name: _SPECS[name] for name in metrics_of_kind(kind)} for kind in KINDS
}
_ID_CACHE_LIMIT = 1_000_000
#: ``,tag={i},...`` in line-protocol order (sorted by key), ``{i}`` the tag's place in TAG_KEYS.
_FAST_TAGS = "".join(f",{key}={{{i}}}" for i, key in _TAG_ORDER)
# orjson reads integers beyond 64 bits as floats: they must fall outside every metric's range.
if any(abs(spec[2]) >= 2**63 or abs(spec[3]) >= 2**63 for spec in _SPECS.values()):
    raise RuntimeError("a metric's range reaches 2**63: the fast path's decoder cannot tell")


class LineFastPath:
    """Envelope straight to line protocol, for messages in which everything is valid.

    Equivalent to the ingestor's general path (``ingest.pipeline.process_message``) followed by
    :class:`LineSerializer`, for every message it
    accepts; it declines (returns ``None``) at the first thing that is not plainly valid, and
    the caller then takes the general path, which names every problem. It accepts exactly the
    envelopes :func:`~citysense.envelope.decode_batch` and
    :func:`~citysense.validation.validate_reading` accept with no rejection. Caches: ids that
    already matched their pattern, and each series' escaped key (ids that match their
    patterns need no escaping). One decode per message.
    """

    def __init__(self, max_age_ms: int = DEFAULT_MAX_AGE_MS) -> None:
        self.max_age_ms = max_age_ms
        self._devices: set[str] = set()
        self._places: set[str] = set()
        self._gateways: set[str] = set()
        self._keys: dict[tuple[object, ...], str] = {}

    def _known(self, cache: set[str], value: object, pattern: re.Pattern[str]) -> bool:
        if type(value) is not str:
            return False
        if value in cache:
            return True
        if not pattern.fullmatch(value):
            return False
        if len(cache) >= _ID_CACHE_LIMIT:
            cache.clear()
        cache.add(value)
        return True

    def lines(
        self, topic_gateway: str, payload: bytes, now_ms: int
    ) -> tuple[int, int, list[str]] | None:
        """``(seq, readings, lines)`` of an all-valid message, else ``None``."""
        try:
            return self._lines(topic_gateway, payload, now_ms)
        except TypeError:  # an unhashable id or kind: not plainly valid
            return None

    def _lines(
        self, topic_gateway: str, payload: bytes, now_ms: int
    ) -> tuple[int, int, list[str]] | None:
        if len(payload) > MAX_ENVELOPE_BYTES:
            return None
        try:
            data = _loads(payload)
        except (ValueError, RecursionError):  # also UnicodeDecodeError: the general path decides
            return None
        if type(data) is not dict:
            return None
        v = data.get("v")
        seq = data.get("seq")
        sent = data.get("sent")
        readings = data.get("readings")
        gateway = data.get("gateway")
        if (
            type(v) is not int
            or v != ENVELOPE_VERSION
            or type(seq) is not int
            or seq < 1
            or type(sent) is not int
            or sent < 0
            or type(readings) is not list
            or len(readings) > MAX_READINGS
            or gateway != topic_gateway
            or not self._known(self._gateways, gateway, GATEWAY_ID_RE)
        ):
            return None
        lo_t = max(0, now_ms - self.max_age_ms)
        hi_t = now_ms + MAX_FUTURE_SKEW_MS
        devices, places, keys = self._devices, self._places, self._keys
        known = self._known
        out: list[str] = []
        append = out.append
        for r in readings:
            if type(r) is not dict:
                return None
            values = r.get("values")
            kind = r.get("kind")
            device = r.get("device")
            district = r.get("district")
            site = r.get("site")
            t = r.get("t")
            specs = _KIND_SPECS.get(kind) if type(kind) is str else None
            if (
                specs is None
                or type(values) is not dict
                or not values
                or type(t) is not int
                or not lo_t <= t <= hi_t
                or (device not in devices and not known(devices, device, DEVICE_ID_RE))
                or (district not in places and not known(places, district, PLACE_ID_RE))
                or (site not in places and not known(places, site, PLACE_ID_RE))
            ):
                return None
            by_domain: dict[str, list[str]] = {}
            for name, value in values.items():
                spec = specs.get(name)
                if spec is None:
                    return None
                domain, is_bool, lo, hi, integer, prefix = spec
                kind_of_value = type(value)
                if is_bool:
                    if kind_of_value is not bool:
                        return None
                    text = "true" if value else "false"
                else:
                    if kind_of_value is float:
                        # NaN fails both comparisons; +-Inf is outside every range
                        if not lo <= value <= hi or (integer and not value.is_integer()):
                            return None
                        text = repr(value)
                    elif kind_of_value is int:
                        if not lo <= value <= hi:
                            return None
                        text = repr(float(value))
                    else:
                        return None
                fields = by_domain.get(domain)
                if fields is None:
                    by_domain[domain] = [prefix + text]
                else:
                    fields.append(prefix + text)
            for domain, fields in by_domain.items():
                cache_key = (domain, device, kind, district, site, gateway)
                key = keys.get(cache_key)
                if key is None:
                    if len(keys) >= _ID_CACHE_LIMIT:
                        keys.clear()
                    # ids that match their patterns need no escaping, and none is empty
                    key = keys[cache_key] = domain + _FAST_TAGS.format(
                        device, kind, district, site, gateway
                    )
                append(f"{key} {','.join(fields)} {t}")
        return seq, len(readings), out
