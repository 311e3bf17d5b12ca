"""InfluxQL reader over the 1.x HTTP API (``GET /query``), for InfluxDB 1.x, 2.x and 3.x.

2.x and 3.x are read through their 1.x compatibility ``/query`` endpoint (token auth, the
bucket as the database).

Invariants:

* query text is built only from catalog identifiers (measurement = domain, field = metric,
  tag keys from :data:`~timeseries.schema.TAG_KEYS`), integers this module formats itself
  (times in ms, bucket widths) and ``$name`` placeholders; every value from outside is sent
  in the ``params`` JSON object, which InfluxDB binds (1.6.7 included) -- it is never pasted
  into the text, so neither a quote nor a ``;`` in a value can change the query;
* every ``SELECT`` is bounded in time (``time >= start AND time < end``);
* the reader builds no writing statement. (1.6.7 *does* run a ``DROP`` sent with
  ``GET /query``, with a deprecation warning: keeping values out of the text is what stops
  it, and the API's InfluxDB user should only be granted ``READ``.)
* HTTP and server errors are translated: unreachable / 5xx / 429 -> RetryableError, anything
  else -> PermanentError.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from citysense.catalog import METRICS
from citysense.errors import PermanentError, RetryableError
from timeseries.connection import InfluxTarget
from timeseries.query import (
    LatestValue,
    QueryError,
    SeriesGroup,
    SeriesQuery,
    check_filters,
    check_metric,
    check_range,
)
from timeseries.schema import TAG_KEYS

log = logging.getLogger(__name__)

_LATEST_TAGS = ("device", "kind", "district", "site")


def quote_ident(name: str) -> str:
    """``"name"`` with InfluxQL identifier escaping (names come from the catalog anyway)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal (for text that cannot be bound): ``\\``, ``'`` and newline
    escaped. InfluxQL's scanner reads NUL as the end of the query and CR as a newline, so text
    holding either cannot be written as a literal and is refused."""
    if "\x00" in value or "\r" in value:
        raise QueryError("text with NUL or CR cannot be an InfluxQL string", "value")
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return "'" + escaped + "'"


def time_clause(start_ms: int, end_ms: int) -> str:
    return f"time >= {int(start_ms)}ms AND time < {int(end_ms)}ms"


def where_filters(filters: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """``AND "tag" = $tag ...`` and the params binding each value."""
    checked = check_filters(filters)
    text = "".join(f" AND {quote_ident(k)} = ${k}" for k in checked)
    return text, dict(checked)


def build_latest(metric: str, filters: Mapping[str, str], start_ms: int, end_ms: int) -> str:
    m = METRICS[check_metric(metric)]
    where, _ = where_filters(filters)
    tags = ", ".join(quote_ident(t) for t in _LATEST_TAGS)
    return (
        f"SELECT last({quote_ident(m.name)}) AS value FROM {quote_ident(m.domain)} "
        f"WHERE {time_clause(start_ms, end_ms)}{where} GROUP BY {tags}"
    )


def build_newest_rows(
    metrics: list[str], filters: Mapping[str, str], start_ms: int, end_ms: int
) -> str:
    """The newest point of each device in one measurement, with ``metrics`` as columns."""
    domains = {METRICS[check_metric(m)].domain for m in metrics}
    if len(domains) != 1:
        raise PermanentError("build_newest_rows takes metrics of one measurement")
    where, _ = where_filters(filters)
    fields = ", ".join(quote_ident(m) for m in metrics)
    tags = ", ".join(quote_ident(t) for t in _LATEST_TAGS)
    return (
        f"SELECT {fields} FROM {quote_ident(domains.pop())} "
        f"WHERE {time_clause(start_ms, end_ms)}{where} GROUP BY {tags} "
        "ORDER BY time DESC LIMIT 1"
    )


def _select(q: SeriesQuery, func: str, extra_where: str = "") -> str:
    where, _ = where_filters(q.filters)
    group = f"time({int(q.every_ms)}ms, {int(q.offset_ms)}ms)"
    if q.group_by is not None:
        group += f", {quote_ident(q.group_by)}"
    return (
        f"SELECT {func}({quote_ident(q.metric)}) AS value FROM {quote_ident(q.measurement)} "
        f"WHERE {time_clause(q.start_ms, q.end_ms)}{where}{extra_where} "
        f"GROUP BY {group} fill(none)"
    )


def build_series(q: SeriesQuery) -> list[str]:
    """The statements answering ``q``: one, or two for a boolean metric aggregated
    numerically (InfluxQL has no mean/sum/min/max of booleans: count the true values and
    all values, and combine them per bucket)."""
    if q.is_bool and q.agg not in ("count", "last"):
        return [
            _select(q, "count", f" AND {quote_ident(q.metric)} = true"),
            _select(q, "count"),
        ]
    return [_select(q, q.agg)]


def build_count(q: SeriesQuery) -> str:
    inner = _select(q, "count" if q.is_bool else q.agg)
    return f"SELECT count(value) FROM ({inner})"


def _combine_bool(agg: str, trues: float, total: float) -> float:
    if agg == "sum":
        return trues
    if agg == "mean":
        return trues / total
    if agg == "max":
        return 1.0 if trues > 0 else 0.0
    return 1.0 if trues >= total else 0.0  # min


def _num(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value)


#: points per chunk of a chunked answer (each parsed in well under a millisecond or so)
CHUNK_POINTS = 2000


async def read_chunks(lines: AsyncIterator[str]) -> dict[str, Any]:
    """A chunked ``/query`` answer (one JSON object a line, a series continued over chunks
    while marked ``partial``) as the one object the unchunked answer would be; the event
    loop runs other work between chunks."""
    results: dict[int, dict[str, Any]] = {}
    body: dict[str, Any] = {}
    async for line in lines:
        if not line.strip():
            continue
        chunk = json.loads(line)
        if "error" in chunk:
            body["error"] = chunk["error"]
        for r in chunk.get("results", []):
            sid = int(r.get("statement_id", 0))
            acc = results.setdefault(sid, {"statement_id": sid})
            if "error" in r:
                acc["error"] = r["error"]
            series = acc.setdefault("series", [])
            for s in r.get("series", []):
                last = series[-1] if series else None
                if (
                    last is not None
                    and last.pop("partial", False)
                    and (last.get("name"), last.get("tags")) == (s.get("name"), s.get("tags"))
                ):
                    last["values"].extend(s.get("values", []))
                    if s.get("partial"):
                        last["partial"] = True
                else:
                    series.append(s)
        await asyncio.sleep(0)
    for acc in results.values():
        if not acc["series"]:
            del acc["series"]
        for s in acc.get("series", []):
            s.pop("partial", None)
    body["results"] = [results[k] for k in sorted(results)]
    return body


class InfluxQLReader:
    """:class:`~timeseries.query.Reader` over InfluxQL ``/query``."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        chunked: bool = False,
    ) -> None:
        headers = {"Accept": "application/json"}
        self._chunked = chunked
        auth: httpx.BasicAuth | None = None
        if token:
            headers["Authorization"] = f"Token {token}"
        elif username is not None:
            auth = httpx.BasicAuth(username, password or "")
        self._url = url
        self._db = database
        self._client = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            auth=auth,
            timeout=timeout,
            transport=transport,
            verify=verify,
        )

    @classmethod
    def from_target(
        cls,
        target: InfluxTarget,
        api: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> InfluxQLReader:
        """1.x: user/password, the database; 2.x/3.x: token, the bucket (as database)."""
        database = target.database if api == "1" else target.bucket
        return cls(
            target.url,
            database,
            username=target.username,
            password=target.password,
            token=target.token if api != "1" else None,
            timeout=target.timeout,
            transport=transport,
            verify=target.verify(),
            chunked=api == "1",
        )

    @property
    def description(self) -> str:
        return f"influxdb {self._url} db={self._db}"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        try:
            response = await self._client.get("/ping")
        except httpx.HTTPError as exc:
            raise RetryableError(f"InfluxDB at {self._url} is unreachable: {exc}") from exc
        if response.status_code >= 300:
            raise RetryableError(f"InfluxDB /ping answered {response.status_code}")

    async def _query(
        self, statements: list[str], params: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Run statements (built here, never from outside text) and return their results."""
        query = ";\n".join(statements)
        request_params = {"db": self._db, "q": query, "epoch": "ms"}
        if params:
            request_params["params"] = json.dumps(dict(params))
        if self._chunked:  # a long answer parsed chunk by chunk, other requests between
            request_params.update(chunked="true", chunk_size=str(CHUNK_POINTS))
        log.debug("influxql %s params=%s", query, params)
        status = 0
        try:
            request = self._client.build_request("GET", "/query", params=request_params)
            response = await self._client.send(request, stream=True)
            status = response.status_code
            try:
                if response.status_code == 429 or response.status_code >= 500:
                    retry = response.headers.get("Retry-After")
                    raise RetryableError(
                        f"InfluxDB answered {response.status_code}",
                        float(retry) if retry and retry.isdigit() else None,
                    )
                if self._chunked and response.status_code < 300:
                    body = await read_chunks(response.aiter_lines())
                else:
                    body = json.loads(await response.aread())
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise RetryableError(f"InfluxDB query timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise RetryableError(f"InfluxDB at {self._url} is unreachable: {exc}") from exc
        except ValueError as exc:
            raise PermanentError(f"InfluxDB answered {status}, not JSON") from exc
        if response.status_code >= 400 or "error" in body:
            raise PermanentError(f"InfluxDB refused the query: {body.get('error', body)}")
        results: list[dict[str, Any]] = body.get("results", [])
        for result in results:
            if "error" in result:
                if "database not found" in str(result["error"]):
                    return [{} for _ in statements]
                raise PermanentError(f"InfluxDB refused the query: {result['error']}")
        if len(results) != len(statements):
            raise PermanentError(
                f"InfluxDB answered {len(results)} results for {len(statements)} statements"
            )
        return results

    async def latest(
        self,
        metrics: tuple[str, ...],
        filters: Mapping[str, str],
        start_ms: int,
        end_ms: int,
    ) -> list[LatestValue]:
        """Newest row per device and measurement (one statement per measurement, read from
        the end of each series); a metric missing from a device's newest row is then asked
        for with ``last()``, so a partial reading never hides an older value."""
        check_range(start_ms, end_ms)
        if not metrics:
            return []
        _, params = where_filters(filters)
        by_domain: dict[str, list[str]] = {}
        for m in metrics:
            by_domain.setdefault(METRICS[check_metric(m)].domain, []).append(m)
        domains = list(by_domain)
        statements = [build_newest_rows(by_domain[d], filters, start_ms, end_ms) for d in domains]
        results = await self._query(statements, params)
        # a device whose tags changed appears once per tag set: keep its newest value
        newest: dict[tuple[str, str], LatestValue] = {}
        seen = dict(zip(domains, _newest_rows(results, newest), strict=True))
        # only a device with rows of a metric's measurement can hold it: a traffic counter
        # never lacks pm25
        missing = [m for m in metrics if any((d, m) not in newest for d in seen[METRICS[m].domain])]
        if missing:
            answers = await self._query(
                [build_latest(m, filters, start_ms, end_ms) for m in missing], params
            )
            for metric, result in zip(missing, answers, strict=True):
                for series in result.get("series", []):
                    tags = series.get("tags", {})
                    for t, value in series.get("values", []):
                        _keep(newest, tags, metric, int(t), value)
        return sorted(newest.values(), key=lambda r: (r.device, r.metric))

    async def series(self, query: SeriesQuery) -> list[SeriesGroup]:
        return (await self.series_many([query]))[0]

    async def series_many(self, queries: list[SeriesQuery]) -> list[list[SeriesGroup]]:
        """Queries with the same filters go in one request (their statements joined, one
        ``params`` object); others in a request each, concurrently."""
        batches: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for i, q in enumerate(queries):
            batches.setdefault(tuple(sorted(q.filters.items())), []).append(i)
        out: list[list[SeriesGroup]] = [[] for _ in queries]

        async def run(indexes: list[int]) -> None:
            _, params = where_filters(queries[indexes[0]].filters)
            statements = [build_series(queries[i]) for i in indexes]
            flat = [s for group in statements for s in group]
            results = await self._query(flat, params)
            k = 0
            for i, group in zip(indexes, statements, strict=True):
                out[i] = self._series_of(queries[i], results[k : k + len(group)])
                k += len(group)

        await asyncio.gather(*(run(ix) for ix in batches.values()))
        return out

    def _series_of(self, query: SeriesQuery, results: list[dict[str, Any]]) -> list[SeriesGroup]:
        groups = _parse_groups(results[0], query.group_by)
        if len(results) == 2:
            totals = _parse_groups(results[1], query.group_by)
            trues = {k: dict(points) for k, points in groups.items()}
            groups = {
                key: [
                    (t, _combine_bool(query.agg, trues.get(key, {}).get(t, 0.0), n))
                    for t, n in points
                ]
                for key, points in totals.items()
            }
        key_name = query.group_by
        return [
            SeriesGroup({key_name: key} if key_name else {}, points)
            for key, points in sorted(groups.items())
        ]

    async def count_series(self, query: SeriesQuery) -> int:
        _, params = where_filters(query.filters)
        results = await self._query([build_count(query)], params)
        total = 0
        for series in results[0].get("series", []):
            for _, value in series.get("values", []):
                total += int(value or 0)
        return total

    async def tag_values(self, key: str, metric: str, filters: Mapping[str, str]) -> list[str]:
        if key not in TAG_KEYS:
            raise PermanentError(f"unknown tag key {key!r}")
        m = METRICS[check_metric(metric)]
        checked = check_filters(filters)
        where = " AND ".join(f"{quote_ident(k)} = ${k}" for k in checked)
        statement = (
            f"SHOW TAG VALUES FROM {quote_ident(m.domain)} WITH KEY = {quote_ident(key)}"
            + (f" WHERE {where}" if where else "")
        )
        results = await self._query([statement], checked)
        values: set[str] = set()
        for series in results[0].get("series", []):
            for row in series.get("values", []):
                values.add(str(row[1]))
        return sorted(values)


def _parse_groups(
    result: dict[str, Any], group_by: str | None
) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for series in result.get("series", []):
        key = series.get("tags", {}).get(group_by, "") if group_by else ""
        points = out.setdefault(key, [])
        for t, value in series.get("values", []):
            v = _num(value)
            if v is not None:
                points.append((int(t), v))
    for points in out.values():
        points.sort()
    return out


def _newest_rows(
    results: list[dict[str, Any]], newest: dict[tuple[str, str], LatestValue]
) -> list[set[str]]:
    """Keep the values of the newest rows in ``newest``; the devices seen in each result."""
    seen: list[set[str]] = []
    for result in results:
        devices: set[str] = set()
        seen.append(devices)
        for series in result.get("series", []):
            tags = series.get("tags", {})
            columns = series.get("columns", [])
            devices.add(tags.get("device", ""))
            for row in series.get("values", []):
                t = int(row[0])
                for name, value in zip(columns[1:], row[1:], strict=False):
                    _keep(newest, tags, name, t, value)
    return seen


def _keep(
    newest: dict[tuple[str, str], LatestValue],
    tags: Mapping[str, str],
    metric: str,
    t: int,
    value: Any,
) -> None:
    """Keep a value unless it is not a number or one of its device and metric at least as
    new is kept already."""
    v = _num(value)
    if v is None:
        return
    row = LatestValue(
        tags.get("device", ""),
        tags.get("kind", ""),
        tags.get("district", ""),
        tags.get("site", ""),
        metric,
        t,
        v,
    )
    key = (row.device, metric)
    if key not in newest or newest[key].t < row.t:
        newest[key] = row
