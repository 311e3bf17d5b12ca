"""Log output for the services: ``text``, ``json`` or ``journal`` lines on standard error.

* ``text``: ``time level logger: message`` for a terminal or a file.
* ``journal``: ``<N>logger: message`` -- no timestamp (journald adds its own) and the syslog
  priority as the ``<N>`` prefix journald reads (``<3>`` error, ``<4>`` warning, ``<6>`` info,
  ``<7>`` debug). Chosen by ``auto`` when ``JOURNAL_STREAM`` is set (systemd sets it when
  standard error is connected to the journal).
* ``json``: one object per line with ``time``, ``level``, ``logger``, ``message`` and any
  extra fields given with ``extra=`` (and ``exception`` when there is one).

Repetitive lines are summarised: the same message template from the same logger at the same
level is written at most :data:`REPEAT_BURST` times per :data:`REPEAT_WINDOW` seconds; the
rest are counted and reported as one line ("... N more like this") when the window closes, so
a flood after a reconnect (every batch re-sent, every uplink refused) is a handful of lines.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

FORMATS = ("auto", "text", "json", "journal")
#: Lines of one template written per window before the rest are only counted.
REPEAT_BURST = 5
#: Seconds of one summarising window.
REPEAT_WINDOW = 60.0

#: syslog priorities by logging level (RFC 5424 severities).
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
#: Attributes every LogRecord has; anything else came from ``extra=`` and is a field.
#: (uvicorn adds ``color_message``, the message with terminal colours: not a field.)
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


def resolve_format(name: str, environ: Mapping[str, str] | None = None) -> str:
    """``auto`` -> ``journal`` when ``JOURNAL_STREAM`` is set, else ``text``."""
    env = os.environ if environ is None else environ
    if name == "auto":
        return "journal" if env.get("JOURNAL_STREAM") else "text"
    if name not in FORMATS:
        raise ValueError(f"unknown log format {name!r}")
    return name


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between round down to the next)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` (journald adds the time and reads the priority)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"<{priority(record.levelno)}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            # one journal entry per line: continuation lines keep the priority
            text += "\n" + self.formatException(record.exc_info)
        return text.replace("\n", f"\n<{priority(record.levelno)}>")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = _fields(record)
        if fields:
            out["fields"] = fields
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(name: str) -> logging.Formatter:
    if name == "journal":
        return JournalFormatter()
    if name == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass(slots=True)
class _Window:
    start: float
    seen: int
    example: logging.LogRecord


class RepeatSummary(logging.Filter):
    """Lets :data:`REPEAT_BURST` records of one template through per window; counts the rest.

    When a window with suppressed records closes (noticed on the next record of any kind, or
    at :meth:`flush`), one summary record ``"<message> -- N more like this in the last S s"``
    is written through ``handler``.
    """

    def __init__(
        self,
        handler: logging.Handler,
        burst: int = REPEAT_BURST,
        window: float = REPEAT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self._clock = clock
        self._handler = handler
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_summary", False):
            return True
        now = self._clock()
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            due = self._close_windows(now)
            win = self._windows.get(key)
            if win is None:
                win = self._windows[key] = _Window(now, 0, record)
            win.seen += 1
            win.example = record
            passed = win.seen <= self.burst
        for summary in due:
            self._handler.handle(summary)
        return passed

    def _summary(self, win: _Window, now: float) -> logging.LogRecord | None:
        extra = win.seen - self.burst
        if extra <= 0:
            return None
        span = max(1.0, min(now, win.start + self.window) - win.start)
        summary = logging.makeLogRecord(vars(win.example))
        summary.msg = (
            f"{win.example.getMessage()} -- {extra} more like this in the last {span:.0f} s"
        )
        summary.args = None
        summary.exc_info = None
        summary.exc_text = None
        summary._summary = True
        return summary

    def _close_windows(self, now: float) -> list[logging.LogRecord]:
        out: list[logging.LogRecord] = []
        for key, win in list(self._windows.items()):
            if now - win.start >= self.window:
                summary = self._summary(win, now)
                if summary is not None:
                    out.append(summary)
                del self._windows[key]
        return out

    def flush(self) -> None:
        """Report every open window's suppressed count now (at shutdown)."""
        with self._lock:
            due = [s for w in self._windows.values() if (s := self._summary(w, self._clock()))]
            self._windows.clear()
        for summary in due:
            self._handler.handle(summary)


_installed: tuple[logging.Handler, RepeatSummary] | None = None


class StderrHandler(logging.StreamHandler):
    """Writes each record to standard error as it is when the record is written, not as it was
    when the logs were configured: a service that replaces ``sys.stderr`` later (or a command
    run in-process whose standard error was a temporary capture) keeps its logs, and a closed
    old stream never turns a log line into an error."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # no fixed stream of its own

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def configure(
    level: str = "INFO",
    fmt: str = "auto",
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Send the root logger's records to ``stream`` (standard error) in ``fmt``; returns the
    format chosen. Replaces what an earlier call installed."""
    global _installed
    chosen = resolve_format(fmt, environ)
    root = logging.getLogger()
    if _installed is not None:
        old_handler, old_filter = _installed
        old_filter.flush()
        root.removeHandler(old_handler)
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.setFormatter(formatter(chosen))
    summary = RepeatSummary(handler)
    handler.addFilter(summary)
    root.addHandler(handler)
    root.setLevel(level)
    _installed = (handler, summary)
    return chosen


def flush() -> None:
    """Write the pending summaries (call at shutdown)."""
    if _installed is not None:
        _installed[1].flush()
