"""What a service is waiting on, for ``GET /health`` (edge and ingest, on their metrics address).

A service registers what it depends on (``broker``, ``store``) and reports each one up or down
as it learns it (:meth:`Health.observe`); everything starts down ("waiting since start").
:meth:`Health.report` answers ``200`` while nothing has been down longer than the threshold
(``--unhealthy-after``) and ``503`` once something has, with a JSON body naming what the
service waits on and for how long::

    {"status": "ok" | "waiting" | "unhealthy", "waiting_on": [{"what": "broker",
     "seconds": 12.5}], "unhealthy_after": 60.0}

Pure bookkeeping: no I/O; the clock is injectable for tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable


class Health:
    """Up/down state of a service's dependencies and since when each is down."""

    def __init__(
        self,
        depends_on: Iterable[str],
        unhealthy_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unhealthy_after = unhealthy_after
        self._clock = clock
        start = clock()
        self._down_since: dict[str, float | None] = dict.fromkeys(depends_on, start)

    def observe(self, what: str, up: bool) -> None:
        """``what`` is reachable (``up``) or not, as of now."""
        if up:
            self._down_since[what] = None
        elif self._down_since.get(what) is None:
            self._down_since[what] = self._clock()

    def report(self) -> tuple[int, dict[str, object]]:
        """(HTTP status, body) of ``GET /health``."""
        now = self._clock()
        down = {w: now - since for w, since in self._down_since.items() if since is not None}
        waiting = [{"what": w, "seconds": round(s, 1)} for w, s in down.items()]
        unhealthy = any(s > self.unhealthy_after for s in down.values())
        status = "unhealthy" if unhealthy else ("waiting" if waiting else "ok")
        body: dict[str, object] = {
            "status": status,
            "waiting_on": waiting,
            "unhealthy_after": self.unhealthy_after,
        }
        return (503 if unhealthy else 200), body

    def render(self) -> tuple[int, bytes]:
        code, body = self.report()
        return code, (json.dumps(body) + "\n").encode()


def health_route(
    health: Health, observe: Callable[[], None] | None = None
) -> Callable[[], Awaitable[tuple[int, str, bytes]]]:
    """A ``GET /health`` handler for :func:`citysense.prometheus.serve_http`; ``observe``
    refreshes what can be read at once (a connection flag) before answering."""

    async def handle() -> tuple[int, str, bytes]:
        if observe is not None:
            observe()
        code, body = health.render()
        return code, "application/json", body

    return handle
