"""Rollups from the lines an ingestor wrote, instead of reading its raw data back.

The ingestor's writer (:class:`~timeseries.rollup.MarkingLineWriter`) keeps, per
(measurement, minute), the lines of its acknowledged writes and the mark tokens they carried.
The worker recomputes a dirty minute from them -- the same windows as from the raw data, the
values summed in the same time order, so to the last bit -- when it can prove they are all
the minute holds:

* every mark of the minute is this writer's (its marks carry the tag ``writer``: another
  ingestor, or this one before a restart, has a writer of its own, kept beside ours);
* the minute's newest mark is one of this writer's acknowledged writes, and none is in flight;
* no write of the minute failed or was partly refused (what the store kept is then unknown),
  its lines were never forgotten (memory is bounded), and every line parsed.

Anything else is read back from the raw data, exactly as before. With several ingestors on a
shared subscription, every minute has several writers: those minutes always take that path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import reduce
from operator import add

from citysense.catalog import METRICS
from timeseries.rollup_core import DIRTY_LOOKBACK_MS, MINUTE, Rolled, Window
from timeseries.schema import TAG_KEYS

#: lines kept across all minutes before the oldest clean minutes are forgotten
MAX_LINES = 1_000_000
#: a clean minute's lines are forgotten this long after its last write (late readings of it
#: then take the raw path)
KEEP_S = 600.0
_TAG_INDEX = {k: i for i, k in enumerate(TAG_KEYS)}

Key = tuple[str, int]  #: (measurement, minute start)


@dataclass(slots=True)
class _Minute:
    lines: list[str] = field(default_factory=list)
    tokens: set[int] = field(default_factory=set)  #: tokens of acknowledged writes
    inflight: int = 0
    usable: bool = True
    last_write: float = 0.0


def _value(text: str) -> float:
    """A field's value as the raw read gives it: a float, an integer (``5i``), a boolean as
    1 or 0; ValueError for anything else."""
    try:
        return float(text)
    except ValueError:
        if text == "true":
            return 1.0
        if text == "false":
            return 0.0
        if text.endswith("i"):
            return float(text[:-1])
        raise


def _columns(rows: list[str], times: list[int]) -> dict[str, tuple[list[int], list[float]]] | None:
    """One series' field texts in time order as name -> (times, values); None when a value
    does not parse. Rows of one layout (the usual case) are converted a column at a time."""
    split = [r.replace("=", ",").split(",") for r in rows]
    first = split[0]
    names = first[0::2]
    if len(set(names)) == len(names) and all(
        len(p) == len(first) and p[0::2] == names for p in split
    ):
        cols = list(zip(*split, strict=True))
        out: dict[str, tuple[list[int], list[float]]] = {}
        for j, name in enumerate(names):
            texts = cols[2 * j + 1]
            try:
                vals = list(map(float, texts))
            except ValueError:
                try:
                    vals = list(map(_value, texts))
                except ValueError:
                    return None
            out[name] = (times, vals)
        return out
    by_name: dict[str, dict[int, float]] = {}  # layouts differ: field by field
    for t, parts in zip(times, split, strict=True):
        for k in range(0, len(parts) - 1, 2):
            try:
                by_name.setdefault(parts[k], {})[t] = _value(parts[k + 1])
            except ValueError:
                return None
    out = {}
    for name, vs in by_name.items():
        ts = sorted(vs)
        out[name] = (ts, [vs[t] for t in ts])
    return out


def split_by_minute(lines: Iterable[str]) -> dict[Key, list[str]]:
    """Lines of line protocol (``m,tags fields t``, ms) grouped by (measurement, minute)."""
    out: dict[Key, list[str]] = {}
    for line in lines:
        t = int(line[line.rindex(" ") + 1 :])
        key = (line[: line.index(",")], t - t % MINUTE)
        group = out.get(key)
        if group is None:
            out[key] = [line]
        else:
            group.append(line)
    return out


class LiveMinutes:
    """The lines one writer stored, per minute, while they can stand for the raw data."""

    def __init__(self, writer: str, max_lines: int = MAX_LINES, keep_s: float = KEEP_S) -> None:
        self.writer = writer
        self.max_lines, self.keep_s = max_lines, keep_s
        self._minutes: dict[Key, _Minute] = {}
        self._seen: set[Key] = set()  #: minutes whose lines were forgotten
        self._tags: dict[str, tuple[str, ...] | None] = {}
        self.lines = 0
        self._pruned = 0.0
        self.used = 0  #: minutes recomputed from kept lines
        self.refused = 0  #: minutes that had to be read back

    def begin(self, keys: Iterable[Key]) -> None:
        """A write of these minutes is about to be sent."""
        now = time.monotonic()
        for key in keys:
            m = self._minutes.get(key)
            if m is None:
                m = self._minutes[key] = _Minute(usable=key not in self._seen)
            m.inflight += 1
            m.last_write = now

    def end(self, groups: dict[Key, list[str]], token: int, stored: bool) -> None:
        """That write ended: ``stored`` when every line of it was (else its minutes are read
        back from now on)."""
        for key, lines in groups.items():
            m = self._minutes[key]
            m.inflight -= 1
            if not stored:
                m.usable = False
            if m.usable:
                m.lines.extend(lines)
                m.tokens.add(token)
                self.lines += len(lines)
            elif m.lines:
                self.lines -= len(m.lines)
                m.lines = []
        if self.lines > self.max_lines:
            self._forget(self.max_lines // 2)

    def windows(self, key: Key, writers: tuple[tuple[str, int], ...]) -> Rolled | None:
        """The minute's windows from its kept lines, or None when they may not be all of it
        (``writers``: every writer's newest mark of the minute, as the store holds them)."""
        m = self._minutes.get(key)
        ok = (
            m is not None
            and m.usable
            and m.inflight == 0
            and len(writers) == 1
            and writers[0][0] == self.writer
            and writers[0][1] in m.tokens
        )
        out = self._aggregate(m.lines, key[1]) if ok and m is not None else None
        if out is None:
            self.refused += 1
            return None
        self.used += 1
        return out

    def _aggregate(self, lines: list[str], minute: int) -> Rolled | None:
        # series -> t -> its fields (a rewrite of a point: its fields after, so they win)
        per_head: dict[str, dict[int, str]] = {}
        for line in lines:
            if "\\" in line or '"' in line:
                return None  # escapes or strings: the raw read decides
            head, fields, t_text = line.split(" ")
            t = int(t_text)
            by_t = per_head.get(head)
            if by_t is None:
                per_head[head] = {t: fields}
            elif t in by_t:
                by_t[t] = by_t[t] + "," + fields
            else:
                by_t[t] = fields
        out: Rolled = {}
        for head, by_t in per_head.items():
            tags = self._series_tags(head)
            if tags is None:
                return None
            if len(by_t) == 1:  # one reading in the minute (a city's usual rate): no columns
                ((t, text),) = by_t.items()
                for pair in text.split(","):
                    name, _, v_text = pair.partition("=")
                    if name in METRICS:
                        try:
                            v = _value(v_text)
                        except ValueError:
                            return None
                        out[(tags, name, minute)] = Window(1, 0.0 + v, v, v, v, t)
                continue
            times = sorted(by_t)
            columns = _columns([by_t[t] for t in times], times)
            if columns is None:
                return None
            for name, (ts, vals) in columns.items():
                if name in METRICS:
                    # summed in time order from 0.0, as Window.add sums the raw data
                    out[(tags, name, minute)] = Window(
                        len(vals), reduce(add, vals, 0.0), min(vals), max(vals), vals[-1], ts[-1]
                    )
        return out

    def _series_tags(self, head: str) -> tuple[str, ...] | None:
        if head in self._tags:
            return self._tags[head]
        tags = [""] * len(TAG_KEYS)
        ok = True
        for part in head.split(",")[1:]:
            k, _, v = part.partition("=")
            i = _TAG_INDEX.get(k)
            if i is None or not v:
                ok = False
                break
            tags[i] = v
        if len(self._tags) >= 200_000:
            self._tags.clear()
        out = self._tags[head] = tuple(tags) if ok else None
        return out

    def done(self, now_ms: int) -> None:
        """Forget the lines of minutes written longer than ``keep_s`` ago, and which minutes
        were forgotten once they are too old to be written again."""
        now = time.monotonic()
        for key in [k for k, m in self._minutes.items() if now - m.last_write > self.keep_s]:
            if self._minutes[key].inflight == 0:
                self._drop(key)
        if now - self._pruned > 60.0:
            self._pruned = now
            oldest = now_ms - DIRTY_LOOKBACK_MS
            self._seen = {k for k in self._seen if k[1] >= oldest}

    def _forget(self, target: int) -> None:
        for key in sorted(self._minutes, key=lambda k: self._minutes[k].last_write):
            if self.lines <= target:
                return
            if self._minutes[key].inflight == 0:
                self._drop(key)

    def _drop(self, key: Key) -> None:
        m = self._minutes.pop(key)
        self.lines -= len(m.lines)
        self._seen.add(key)
