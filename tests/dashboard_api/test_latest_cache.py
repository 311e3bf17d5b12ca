"""The latest-value table's rendered answers and the minutes it re-reads (no storage: the
table is filled by hand, its reader is never asked)."""

from __future__ import annotations

import json

from dashboard_api.latest_cache import REFRESH_S, LatestCache, refresh_pause, written_ranges
from timeseries.query import LatestValue
from timeseries.rollup import HOUR, MINUTE


class NoReader:
    """Stands in for storage, which these checks never reach."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"storage asked: {name}")


def row(device: str, metric: str, t: int, value: float) -> LatestValue:
    return LatestValue(device, "air_station", "north", "s1", metric, t, value)


def render(rows: list[LatestValue]) -> bytes:
    return json.dumps([(r.device, r.metric, r.t, r.value) for r in rows]).encode()


def answer(cache: LatestCache, start: int, end: int) -> list[list[object]]:
    body, count = cache.answer("t", ("pm25", "pm10"), {}, start, end, render)
    got: list[list[object]] = json.loads(body)
    assert count == len(got)
    return got


def test_a_rendered_answer_is_reused_only_while_it_cannot_differ() -> None:
    cache = LatestCache(NoReader(), lambda: 0.0)  # type: ignore[arg-type]
    cache.merge([row("a", "pm25", 1_000, 1.0), row("b", "pm25", 5_000, 2.0)])
    cache.merge([row("c", "pm10", 20_000, 3.0)])  # in the future of the first window
    assert answer(cache, 0, 10_000) == [["a", "pm25", 1_000, 1.0], ["b", "pm25", 5_000, 2.0]]
    assert answer(cache, 500, 10_500) == answer(cache, 0, 10_000)
    assert cache.memo_hits == 2
    # "a" leaves the window at its start
    assert answer(cache, 1_001, 11_001) == [["b", "pm25", 5_000, 2.0]]
    # "c" enters it at its end
    assert [r[0] for r in answer(cache, 10_001, 20_001)] == ["c"]
    # a newer value replaces the table's: the answer is redone
    before = cache.memo_hits
    cache.merge([row("c", "pm10", 20_500, 4.0)])
    assert answer(cache, 10_001, 20_501)[-1] == ["c", "pm10", 20_500, 4.0]
    assert cache.memo_hits == before
    # another filter or metric set is another answer
    body, count = cache.answer("t", ("pm25",), {"device": "b"}, 0, 30_000, render)
    assert count == 1 and json.loads(body) == [["b", "pm25", 5_000, 2.0]]


def test_an_older_value_never_replaces_a_newer_one() -> None:
    cache = LatestCache(NoReader(), lambda: 0.0)  # type: ignore[arg-type]
    cache.merge([row("a", "pm25", 5_000, 2.0)])
    assert cache.merge([row("a", "pm25", 1_000, 1.0)]) == 0  # delivered late
    assert answer(cache, 0, 10_000) == [["a", "pm25", 5_000, 2.0]]


def test_rows_read_again_keep_the_rendered_answer() -> None:
    """The refresh reads each written range twice: the second read changes nothing."""
    cache = LatestCache(NoReader(), lambda: 0.0)  # type: ignore[arg-type]
    rows = [row("a", "pm25", 5_000, 2.0), row("b", "pm10", 6_000, 3.0)]
    assert cache.merge(rows) == 4  # two devices, two values
    answer(cache, 0, 10_000)
    assert cache.merge(rows) == 0
    answer(cache, 0, 10_000)
    assert cache.memo_hits == 1
    # the same time with another value (a correction) is a change
    assert cache.merge([row("a", "pm25", 5_000, 2.5)]) == 1
    assert answer(cache, 0, 10_000)[0] == ["a", "pm25", 5_000, 2.5]
    assert cache.memo_hits == 1


def test_written_minutes_are_read_as_one_range_per_hour() -> None:
    h = 1_000 * HOUR
    fresh = {
        "environment": {h + 5 * MINUTE, h + 7 * MINUTE, h - 3 * HOUR},
        "device_health": {h + 7 * MINUTE},
        "_unknown": {h},
    }
    assert sorted(written_ranges(fresh)) == [
        ("device_health", h + 7 * MINUTE, h + 8 * MINUTE),
        ("environment", h - 3 * HOUR, h - 3 * HOUR + MINUTE),
        ("environment", h + 5 * MINUTE, h + 8 * MINUTE),
    ]
    assert written_ranges({}) == []


def test_a_slow_refresh_is_followed_by_a_longer_pause() -> None:
    """Following the marks a refresh takes milliseconds: once a second. Reading the whole
    fleet's last minutes (no rollups) takes a second at 10,000 devices: then four times as
    long a pause, so the table refreshes itself at most a fifth of the time."""
    assert refresh_pause(0.0) == refresh_pause(0.004) == REFRESH_S
    assert refresh_pause(1.0) == 4.0
    took = 0.8
    assert took / (took + refresh_pause(took)) <= 0.2
