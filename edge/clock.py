"""The gateway's time line: the wall clock, kept from stepping backwards.

A gateway box's clock is stepped now and then (an RTC reset at boot, a bad NTP answer, an
operator's ``date -s``). Device readings carry their own times and are checked against the
gateway's "now" (no more than 5 minutes ahead); in-flight batches are re-sent by the time they
were last published. If the wall clock jumps back an hour, a plain ``time.time()`` would refuse
every honest reading as "in the future" and hold every in-flight batch for an hour.

So the gateway's ``now`` follows the wall clock forwards (a step ahead only makes readings look
older, which is harmless within the 7-day window), but when the wall clock goes *back* it keeps
its own time line -- the last wall time plus the monotonic time since -- and warns once. A
backward step that persists for :data:`ACCEPT_BACK_STEP_AFTER_S` is taken as a correction and
followed, with a warning, so a clock that was wrong ahead is not kept forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: A wall clock behind the time line by less than this is jitter, not a step.
STEP_TOLERANCE_S = 2.0
#: A backward step still in place after this long is taken as a correction.
ACCEPT_BACK_STEP_AFTER_S = 600.0


class GatewayClock:
    """``now_ms()``: the wall clock, never stepping backwards for long (see module doc)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._mono = monotonic
        self._anchor_wall = wall()
        self._anchor_mono = monotonic()
        self._behind_since: float | None = None

    def now(self) -> float:
        wall, mono = self._wall(), self._mono()
        line = self._anchor_wall + (mono - self._anchor_mono)
        if wall >= line - STEP_TOLERANCE_S:
            if self._behind_since is not None:
                log.info("system clock back on the gateway's time line")
                self._behind_since = None
            self._anchor_wall, self._anchor_mono = wall, mono
            return wall
        if self._behind_since is None:
            self._behind_since = mono
            log.warning(
                "system clock stepped back by %.0f s; the gateway keeps its own time line "
                "(device times are checked against it) for up to %.0f s",
                line - wall,
                ACCEPT_BACK_STEP_AFTER_S,
            )
        elif mono - self._behind_since >= ACCEPT_BACK_STEP_AFTER_S:
            log.warning(
                "system clock still %.0f s behind after %.0f s: following it as a correction",
                line - wall,
                mono - self._behind_since,
            )
            self._behind_since = None
            self._anchor_wall, self._anchor_mono = wall, mono
            return wall
        return line

    def now_ms(self) -> int:
        return int(self.now() * 1000)


#: The gateway process's clock.
CLOCK = GatewayClock()


def now_ms() -> int:
    """The gateway's current time in ms since the epoch (see :class:`GatewayClock`)."""
    return CLOCK.now_ms()
