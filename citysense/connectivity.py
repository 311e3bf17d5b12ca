"""What an operator sees of a service's connection to a dependency (a broker, a store).

One policy for every service and every dependency:

* the first failure is logged at WARNING (ERROR for a failure an operator must fix, such as a
  missing database), naming the dependency, its address and the reason;
* while it stays down, one summary line per :data:`SUMMARY_INTERVAL` (how long, how many
  attempts, the last reason, and what waits -- the caller says what);
* recovery is logged at INFO, with how long it was down.

Repeated failures in between go to DEBUG: a dependency down for an hour is a handful of lines.
Safe to call from any thread (paho calls from its network thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: Seconds between two summary lines while a dependency stays down.
SUMMARY_INTERVAL = 60.0
#: A connection closed by the broker this soon after it was made is a takeover suspect.
TAKEOVER_WINDOW = 5.0
#: This many such closings in a row are an id clash (MQTT 3.1.1 gives no reason).
TAKEOVER_CLASH = 3
#: MQTT v5 reason code "Session taken over": another client connected with our id.
SESSION_TAKEN_OVER = 142


class Connectivity:
    """The connection state of one dependency, and its log lines."""

    def __init__(
        self,
        what: str,
        address: str,
        logger: logging.Logger,
        *,
        interval: float = SUMMARY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        client_id: str | None = None,
    ) -> None:
        self.what = what
        self.client_id = client_id
        self.takeovers = 0  #: connections closed by the broker right after they were made
        self._connected_at: float | None = None
        self._clash_logged: float | None = None
        self.address = address
        self.log = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self.down = False
        self.since = 0.0
        self.attempts = 0
        self.reason = ""
        self._warned = False
        self._level = logging.WARNING
        self._summarised = 0.0

    def failed(self, reason: str, *, level: int = logging.WARNING) -> None:
        """An attempt failed; the first one of an outage is logged at ``level``."""
        with self._lock:
            now = self._clock()
            if not self.down:
                self.down, self.since, self.attempts, self._summarised = True, now, 0, now
            self.attempts += 1
            self.reason = reason
            self._level = max(level, self._level) if self._warned else level
            first = not self._warned
            self._warned = True
        if first:
            self.log.log(
                level, "cannot reach the %s at %s: %s; retrying", self.what, self.address, reason
            )
        else:
            self.log.debug("%s at %s still failing: %s", self.what, self.address, reason)

    def lost(self, reason: str, code: int | None = None) -> None:
        """An established connection dropped (INFO: a reconnect is normal); a failure of the
        reconnect is then the WARNING. A connection closed again and again right after it was
        made -- or a v5 "Session taken over" -- is another client using our client id: ERROR."""
        with self._lock:
            now = self._clock()
            quick = self._connected_at is not None and now - self._connected_at < TAKEOVER_WINDOW
            self._connected_at = None
            if code == SESSION_TAKEN_OVER or quick:
                self.takeovers += 1
            else:
                self.takeovers = 0
            clash = code == SESSION_TAKEN_OVER or self.takeovers >= TAKEOVER_CLASH
            # one ERROR per interval while the clash goes on, not one per takeover
            if clash and self._clash_logged is not None:
                clash = now - self._clash_logged >= self.interval
            if clash:
                self._clash_logged = now
            takeovers = self.takeovers
        if clash:
            self.log.error(
                "client id %r is in use by another client: the %s at %s closed our connection "
                "(%s; %d times in a row so far); give each process its own --instance or "
                "--client-id",
                self.client_id,
                self.what,
                self.address,
                reason,
                max(takeovers, 1),
            )
        with self._lock:
            if self.down:
                return
            self.down, self.since, self.attempts, self._summarised = True, now, 0, now
            self.reason = reason
        self.log.info("lost the %s at %s (%s); reconnecting", self.what, self.address, reason)

    def recovered(self) -> None:
        """A connection (or an operation) succeeded."""
        with self._lock:
            self._connected_at = self._clock()
            was_down = self.down
            self.down, self._warned = False, False
            down_for = self._clock() - self.since
        if was_down:
            self.log.info(
                "%s at %s reachable again after %.0f s", self.what, self.address, down_for
            )

    def summary_due(self) -> bool:
        """``True`` when a summary line is due (down, and the interval has passed)."""
        with self._lock:
            return self.down and self._clock() - self._summarised >= self.interval

    def summarise(self, waiting: str) -> None:
        """Log the summary line (at the level of the outage's worst failure, WARNING at least);
        ``waiting`` says what waits (readings, messages)."""
        with self._lock:
            now = self._clock()
            self._summarised = now
            down_for, attempts, reason = now - self.since, self.attempts, self.reason
            level = max(self._level, logging.WARNING)
        self.log.log(
            level,
            "%s at %s unreachable for %.0f s (%d failed attempts, last: %s); %s",
            self.what,
            self.address,
            down_for,
            attempts,
            reason or "no answer",
            waiting,
        )
