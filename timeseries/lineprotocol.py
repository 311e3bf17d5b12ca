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

from collections.abc import Iterable

from citysense.catalog import METRICS
from timeseries.schema import TAG_KEYS, Point

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
