"""The writer seam: one Protocol for every storage, and the classification of write errors.

A :class:`Writer` stores points idempotently (the same measurement, tags and time is one
point) and answers in one of two ways:

* it returns a :class:`WriteResult`: every point not listed in ``rejected`` is stored; the
  rejected ones can never be stored (bad type, beyond retention...) and carry a reason, so the
  caller dead-letters them;
* it raises :class:`~citysense.errors.RetryableError` (network down, 5xx, 429 with its
  Retry-After, auth or database missing): nothing is known to be stored and the caller keeps
  the points and tries again later -- rewriting stored points is harmless.

HTTP answers are classified once, here (:func:`raise_for_write_status`); :func:`write_isolating`
turns a 400 or 413 on a batch into the points that are really bad, by splitting the batch.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from citysense.errors import PermanentError, RetryableError
from timeseries.lineprotocol import LineSerializer
from timeseries.schema import Point

P = TypeVar("P", Point, str)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A point (or a line of line protocol) that storage refused for good, with why."""

    point: Point | str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    """``written`` points are stored; ``rejected`` ones never will be."""

    written: int
    rejected: tuple[Rejected, ...] = ()


class Writer(Protocol):
    """Storage for points (InfluxDB 1.x, 2.x, or the embedded SQLite store)."""

    async def write(self, points: Sequence[Point]) -> WriteResult:
        """Store ``points``; raises :class:`RetryableError` when nothing may be assumed stored."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


class LineWriter(Writer, Protocol):
    """A writer that also takes line protocol serialised by the caller (InfluxDB writers)."""

    async def write_lines(self, lines: Sequence[str]) -> WriteResult:
        """Store lines (one point each, ``precision=ms``); same answers as :meth:`write`."""
        ...


class TooLargeError(PermanentError):
    """The server refused the request body as too large (413): split and try again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "too_large")


class TargetMissingError(RetryableError):
    """The database (1.x) or bucket (2.x) does not exist: an operator must create it; the data
    waits meanwhile."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def rejection_reason(body: str) -> str:
    """A short reason token for an InfluxDB 400 answer."""
    low = body.lower()
    if "field type conflict" in low:
        return "field_type_conflict"
    if "retention policy" in low or "outside retention" in low:
        return "beyond_retention"
    if "unable to parse" in low or "parse" in low:
        return "unparsable"
    if "max-values-per-tag" in low or "max-series" in low:
        return "series_limit"
    return "rejected"


def raise_for_write_status(status: int, body: str, retry_after: str | None) -> None:
    """Classify an HTTP answer to a write: return on success, else raise the right error."""
    if 200 <= status < 300:
        return
    text = body.strip()[:500]
    if status == 413:
        raise TooLargeError(f"request too large (413): {text}")
    if status == 429 or status >= 500:
        raise RetryableError(f"storage answered {status}: {text}", parse_retry_after(retry_after))
    if status in (401, 403):
        # A credentials problem is fixed by an operator; the data must wait, not be dropped.
        raise RetryableError(f"storage refused our credentials ({status}): {text}")
    if status == 404:
        raise TargetMissingError(f"storage target not found (404): {text}")
    raise PermanentError(f"storage rejected points ({status}): {text}", rejection_reason(text))


async def write_isolating(
    send: Callable[[Sequence[P]], Awaitable[None]], points: Sequence[P]
) -> WriteResult:
    """Write with ``send``, splitting the batch on 400/413 until the bad points are alone.

    ``send`` raises :class:`PermanentError` (400) or :class:`TooLargeError` (413) for the
    whole request; halves are sent again (idempotent) until each refusal names one point.
    :class:`RetryableError` propagates: the caller retries the whole batch.
    """
    rejected: list[Rejected] = []

    async def attempt(chunk: Sequence[P]) -> None:
        if not chunk:
            return
        try:
            await send(chunk)
        except PermanentError as exc:
            if len(chunk) == 1:
                rejected.append(Rejected(chunk[0], exc.reason, str(exc)))
                return
            half = len(chunk) // 2
            await attempt(chunk[:half])
            await attempt(chunk[half:])

    await attempt(points)
    return WriteResult(len(points) - len(rejected), tuple(rejected))


class InfluxLineWriter:
    """:meth:`write` and :meth:`write_lines` of the InfluxDB writers, over their one request:
    :meth:`_send_text` (a subclass's) stores a line-protocol body or raises as
    :func:`raise_for_write_status` does; bad points are isolated by :func:`write_isolating`."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._serializer = LineSerializer()

    async def write(self, points: Sequence[Point]) -> WriteResult:
        if not points:
            return WriteResult(0)
        return await write_isolating(self._send, points)

    async def write_lines(self, lines: Sequence[str]) -> WriteResult:
        if not lines:
            return WriteResult(0)
        return await write_isolating(self._send_lines, lines)

    async def _send_text(self, body: str) -> None:
        """Send ``body`` (lines of line protocol, ``precision=ms``) as one request."""
        raise NotImplementedError

    async def _send(self, points: Sequence[Point]) -> None:
        await self._send_text(self._serializer.lines(points))

    async def _send_lines(self, lines: Sequence[str]) -> None:
        await self._send_text("\n".join(lines))
