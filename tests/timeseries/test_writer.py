"""Write-error classification and batch isolation (pure), per CONVENTIONS habit 3."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from citysense.errors import PermanentError, RetryableError
from timeseries.lineprotocol import LineSerializer
from timeseries.schema import Point
from timeseries.writer import (
    InfluxLineWriter,
    TooLargeError,
    WriteResult,
    parse_retry_after,
    raise_for_write_status,
    write_isolating,
)


@pytest.mark.parametrize("status", [200, 204])
def test_success_raises_nothing(status: int) -> None:
    raise_for_write_status(status, "", None)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 401, 403, 404])
def test_retryable_statuses(status: int) -> None:
    with pytest.raises(RetryableError):
        raise_for_write_status(status, "boom", None)


def test_429_honours_retry_after() -> None:
    with pytest.raises(RetryableError) as info:
        raise_for_write_status(429, "slow down", "7")
    assert info.value.retry_after == 7.0


def test_retry_after_as_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_400_is_permanent_with_a_reason() -> None:
    body = '{"error":"partial write: field type conflict: input field \\"pm25\\" ... dropped=1"}'
    with pytest.raises(PermanentError) as info:
        raise_for_write_status(400, body, None)
    assert info.value.reason == "field_type_conflict"
    with pytest.raises(PermanentError) as info:
        raise_for_write_status(400, "partial write: points beyond retention policy", None)
    assert info.value.reason == "beyond_retention"


def test_413_is_too_large() -> None:
    with pytest.raises(TooLargeError):
        raise_for_write_status(413, "too big", None)


def _points(n: int) -> list[Point]:
    return [
        Point("traffic", (f"d{i}", "k", "x", "y", "g"), {"occupancy": 1.0}, i) for i in range(n)
    ]


def test_isolation_finds_each_bad_point_and_keeps_the_rest() -> None:
    """A fake ``send`` that refuses any request holding a bad point, like a 400."""
    bad = {3, 17, 18}
    stored: set[int] = set()
    requests = 0

    async def send(chunk: Sequence[Point]) -> None:
        nonlocal requests
        requests += 1
        if any(p.t in bad for p in chunk):
            raise PermanentError("nope", "field_type_conflict")
        stored.update(p.t for p in chunk)

    result = asyncio.run(write_isolating(send, _points(40)))
    assert result.written == 37
    assert sorted(r.point.t for r in result.rejected) == [3, 17, 18]
    assert {r.reason for r in result.rejected} == {"field_type_conflict"}
    assert stored == set(range(40)) - bad
    assert requests < 40  # bisection, not one request per point


def test_too_large_splits_until_it_fits() -> None:
    sizes: list[int] = []

    async def send(chunk: Sequence[Point]) -> None:
        if len(chunk) > 8:
            raise TooLargeError("413")
        sizes.append(len(chunk))

    result = asyncio.run(write_isolating(send, _points(50)))
    assert result == WriteResult(50)
    assert sum(sizes) == 50 and max(sizes) <= 8


def test_retryable_propagates_for_the_whole_batch() -> None:
    async def send(chunk: Sequence[Point]) -> None:
        raise RetryableError("down", retry_after=2.0)

    with pytest.raises(RetryableError):
        asyncio.run(write_isolating(send, _points(3)))


class _Bodies(InfluxLineWriter):
    """An InfluxDB writer whose server refuses a body holding a line with ``bad``, like a 400."""

    def __init__(self) -> None:
        super().__init__("http://influx.invalid")
        self.bodies: list[str] = []

    async def _send_text(self, body: str) -> None:
        if "bad" in body:
            raise PermanentError("nope", "unparsable")
        self.bodies.append(body)


def test_an_influx_writer_sends_points_and_lines_as_bodies_and_isolates_the_bad() -> None:
    writer = _Bodies()
    points = _points(3)
    assert asyncio.run(writer.write(points)) == WriteResult(3)
    assert writer.bodies == [LineSerializer().lines(points)]
    result = asyncio.run(writer.write_lines(["a 1", "bad", "c 3"]))
    assert result.written == 2 and [r.point for r in result.rejected] == ["bad"]
    assert writer.bodies[1:] == ["a 1", "c 3"]  # the whole body was refused, then split
    assert asyncio.run(writer.write([])) == WriteResult(0)
    assert asyncio.run(writer.write_lines([])) == WriteResult(0)
