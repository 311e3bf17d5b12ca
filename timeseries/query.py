"""Queries for the operator API: the :class:`Reader` seam and the values it returns.

A reader answers a small, closed set of questions -- latest value per device, time-bucketed
aggregates, tag values, point counts -- over InfluxDB (:mod:`timeseries.influxql`) or the
embedded SQLite store (:mod:`timeseries.sqlite_query`). :func:`open_reader` picks one from the
settings.

Invariants:

* every identifier in a query (measurement, field, tag key) comes from the catalog or
  :data:`~timeseries.schema.TAG_KEYS`, checked here by :func:`check_filters` and the
  ``Query`` constructors; every value is bound or escaped by the reader;
* every query is bounded in time (``start <= t < end``, epoch milliseconds);
* buckets are aligned to the Unix epoch plus an optional offset (as InfluxQL's
  ``GROUP BY time(every, offset)``), labelled by their start; a bucket without data is absent;
* readers only read: nothing here writes to storage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from citysense.catalog import METRICS
from citysense.config import Settings
from citysense.errors import InputError
from citysense.model import DEVICE_ID_RE, GATEWAY_ID_RE, PLACE_ID_RE

Agg = Literal["mean", "min", "max", "sum", "count", "last"]
AGGS: tuple[str, ...] = ("mean", "min", "max", "sum", "count", "last")
GroupKey = Literal["district", "device", "site", "kind"]
GROUP_KEYS: tuple[str, ...] = ("district", "device", "site", "kind")
#: Tag keys a query may filter on (``gateway`` is internal plumbing, not a filter).
FILTER_KEYS: tuple[str, ...] = ("device", "kind", "district", "site", "gateway")

_FILTER_RES = {
    "device": DEVICE_ID_RE,
    "district": PLACE_ID_RE,
    "site": PLACE_ID_RE,
    "kind": PLACE_ID_RE,
    "gateway": GATEWAY_ID_RE,
}


class QueryError(InputError):
    """A query the reader refuses before sending anything (bad metric, tag or range)."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message, "bad_query")
        self.parameter = parameter


def check_filters(filters: Mapping[str, str]) -> dict[str, str]:
    """Filters as a plain dict, after checking keys against the schema and values' syntax.

    A value that cannot be a valid id (``x' OR district='y``) can match nothing; it is
    refused here as well, so hostile text never reaches a query even as a bound value.
    """
    out: dict[str, str] = {}
    for key, value in filters.items():
        if key not in FILTER_KEYS:
            raise QueryError(f"unknown filter {key!r}", key)
        if not _FILTER_RES[key].fullmatch(value):
            raise QueryError(f"{key} {value!r} is not a valid {key} id", key)
        out[key] = value
    return out


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise QueryError(f"unknown metric {metric!r}", "metric")
    return metric


def check_range(start_ms: int, end_ms: int) -> None:
    if start_ms >= end_ms:
        raise QueryError("start must be before end", "start")


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """Time buckets of one metric: ``agg`` over ``every`` ms, optionally grouped by a tag."""

    metric: str
    start_ms: int
    end_ms: int
    every_ms: int
    agg: Agg
    filters: Mapping[str, str] = field(default_factory=dict)
    group_by: GroupKey | None = None
    offset_ms: int = 0  #: buckets start at ``offset + k * every`` (0: aligned to the epoch)

    def __post_init__(self) -> None:
        check_metric(self.metric)
        check_range(self.start_ms, self.end_ms)
        if self.every_ms < 1:
            raise QueryError("every must be positive", "every")
        if not 0 <= self.offset_ms < self.every_ms:
            raise QueryError("offset must be in [0, every)", "every")
        if self.agg not in AGGS:
            raise QueryError(f"agg must be one of {', '.join(AGGS)}", "agg")
        if self.group_by is not None and self.group_by not in GROUP_KEYS:
            raise QueryError(f"group_by must be one of {', '.join(GROUP_KEYS)}", "group_by")
        object.__setattr__(self, "filters", check_filters(self.filters))

    @property
    def measurement(self) -> str:
        return METRICS[self.metric].domain

    @property
    def is_bool(self) -> bool:
        return METRICS[self.metric].type == "bool"

    @property
    def first_bucket_ms(self) -> int:
        e, o = self.every_ms, self.offset_ms
        return (self.start_ms - o) // e * e + o

    @property
    def bucket_count(self) -> int:
        """Buckets in the range: the most points one group can return."""
        span = self.end_ms - self.first_bucket_ms
        return -(-span // self.every_ms)


@dataclass(frozen=True, slots=True)
class LatestValue:
    """The newest value of one metric of one device in the queried range."""

    device: str
    kind: str
    district: str
    site: str
    metric: str
    t: int
    value: float


@dataclass(frozen=True, slots=True)
class SeriesGroup:
    """One group's buckets: ``group`` maps the grouping tag to its value (empty: no grouping)."""

    group: dict[str, str]
    points: list[tuple[int, float]]


class Reader(Protocol):
    """Read access to stored readings (InfluxDB or the embedded store)."""

    @property
    def description(self) -> str:
        """What storage this is, for ``/health`` (never with credentials)."""
        ...

    async def ping(self) -> None:
        """Raise :class:`~citysense.errors.RetryableError` when storage is unreachable."""
        ...

    async def latest(
        self,
        metrics: tuple[str, ...],
        filters: Mapping[str, str],
        start_ms: int,
        end_ms: int,
    ) -> list[LatestValue]:
        """The newest value of each of ``metrics`` per device, within ``[start, end)``."""
        ...

    async def series(self, query: SeriesQuery) -> list[SeriesGroup]:
        """Aggregated buckets per group, groups sorted by their tag value, points by time."""
        ...

    async def series_many(self, queries: list[SeriesQuery]) -> list[list[SeriesGroup]]:
        """:meth:`series` of each query, in one round trip where the storage allows."""
        ...

    async def count_series(self, query: SeriesQuery) -> int:
        """Exactly how many points :meth:`series` would return for ``query``."""
        ...

    async def tag_values(self, key: str, metric: str, filters: Mapping[str, str]) -> list[str]:
        """Distinct values of tag ``key`` among points of ``metric`` matching ``filters``.

        Over the metric's measurement from the index (InfluxDB) or the whole store (SQLite),
        not bounded in time: an upper bound used to size queries before running them.
        """
        ...

    async def aclose(self) -> None: ...


@asynccontextmanager
async def open_reader(settings: Settings) -> AsyncIterator[Reader]:
    """The reader for the configured storage; closed on exit.

    InfluxDB 1.x is read with InfluxQL over ``/query``; 2.x and 3.x through their 1.x
    compatibility ``/query`` endpoint (token auth, database = bucket).
    """
    from timeseries.connection import InfluxTarget, detect_api, storage_target

    target = storage_target(settings)
    reader: Reader
    if isinstance(target, InfluxTarget):
        from timeseries.influxql import InfluxQLReader

        api = "1"
        if target.api != "1":
            try:
                api = await detect_api(target)
            except Exception:  # unreachable now: assume 1.x, /health reports the outage
                api = "1" if target.api == "auto" else target.api
        reader = InfluxQLReader.from_target(target, api)
    else:
        from timeseries.sqlite_query import SqliteReader

        reader = SqliteReader(target.path)
    try:
        yield reader
    finally:
        await reader.aclose()
