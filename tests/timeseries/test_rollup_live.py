"""The lines an ingestor stored stand for a minute's raw data only when they provably are
all of it (unit tests of :class:`~timeseries.rollup_live.LiveMinutes`; the end-to-end checks
against a real influxd are in test_rollup.py)."""

from __future__ import annotations

import random

from timeseries.rollup_core import MINUTE, aggregate
from timeseries.rollup_live import LiveMinutes, split_by_minute

M = 1_700_000_040_000  # a minute's start
TAGS = ("aq-1", "air_station", "north", "s1", "gw-1")
HEAD = "environment,device=aq-1,district=north,gateway=gw-1,kind=air_station,site=s1"


def stored(live: LiveMinutes, lines: list[str], token: int, ok: bool = True) -> None:
    groups = split_by_minute(lines)
    live.begin(groups)
    live.end(groups, token, ok)


def test_windows_equal_the_raw_aggregate_to_the_bit() -> None:
    rng = random.Random(3)
    live = LiveMinutes("me")
    rows = []
    lines = []
    for i in range(200):
        t = M + rng.randrange(MINUTE)
        v = rng.uniform(-50, 900)
        lines.append(f"{HEAD} pm25={v!r},leak={'true' if i % 3 else 'false'} {t}")
        rows.append((t, v, 1.0 if i % 3 else 0.0))
    stored(live, lines[:120], 11)
    stored(live, lines[120:], 12)
    got = live.windows(("environment", M), (("me", 12),))
    latest = {t: (v, b) for t, v, b in rows}  # a rewrite of a time wins
    raw = [(TAGS, "pm25", t, v) for t, (v, _) in sorted(latest.items())]
    raw += [(TAGS, "leak", t, b) for t, (_, b) in sorted(latest.items())]
    raw.sort(key=lambda r: r[2])
    assert got == aggregate(raw, MINUTE)
    assert live.used == 1 and live.refused == 0


def test_refused_unless_provably_all_of_the_minute() -> None:
    line = f"{HEAD} pm25=1.5 {M + 10}"
    live = LiveMinutes("me")
    stored(live, [line], 1)
    key = ("environment", M)
    assert live.windows(key, (("me", 1),)) is not None
    assert live.windows(key, (("", 5), ("me", 1))) is None  # marked before writers were named
    assert live.windows(key, (("other", 7), ("me", 1))) is None  # another ingestor
    assert live.windows(key, (("me", 2),)) is None  # a mark of a write not acknowledged
    groups = split_by_minute([line])
    live.begin(groups)
    assert live.windows(key, (("me", 1),)) is None  # a write in flight
    live.end(groups, 3, False)  # failed or partly refused: what the store kept is unknown
    assert live.windows(key, (("me", 3),)) is None
    stored(live, [line], 4)
    assert live.windows(key, (("me", 4),)) is None  # stays unknown

    escaped = LiveMinutes("me")
    stored(escaped, [f"environment,device=a\\ b,kind=air_station pm25=1.5 {M}"], 1)
    assert escaped.windows(key, (("me", 1),)) is None  # escapes: the raw read decides


def test_forgotten_minutes_are_read_back_when_written_again() -> None:
    live = LiveMinutes("me", max_lines=10)
    for i in range(12):  # over the bound: the oldest minutes are forgotten
        stored(live, [f"{HEAD} pm25=1.0 {M + i * MINUTE}"], 100 + i)
    assert live.lines <= 10
    first = ("environment", M)
    assert live.windows(first, (("me", 100),)) is None
    stored(live, [f"{HEAD} pm25=2.0 {M + 1}"], 200)
    assert live.windows(first, (("me", 200),)) is None  # its earlier lines are gone
    newest = ("environment", M + 11 * MINUTE)
    assert live.windows(newest, (("me", 111),)) is not None


def test_combine_hour_equals_combine() -> None:
    from timeseries.rollup_core import HOUR, Window, combine, combine_hour

    rng = random.Random(5)
    hour = M - M % HOUR
    series = [("a",), ("b",), ("c",)]
    minutes: dict[int, dict] = {}  # type: ignore[type-arg]
    for m in range(hour, hour + HOUR, MINUTE):
        for tags in series:
            if rng.random() < 0.5:
                for metric in ("pm25", "no2"):
                    v = [rng.choice((0.0, -0.0, 1.5, rng.uniform(-5, 5))) for _ in range(3)]
                    w = Window(3, sum(v), min(v), max(v), v[-1], m + rng.randrange(MINUTE))
                    minutes.setdefault(m, {})[(tags, metric, m)] = w
    wanted = {("a",), ("c",)}
    flat = [
        (tags, metric, t, w)
        for m in sorted(minutes)
        for (tags, metric, t), w in minutes[m].items()
        if tags in wanted
    ]
    assert combine_hour(minutes, hour, wanted) == combine(flat)
