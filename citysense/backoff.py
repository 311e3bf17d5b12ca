"""Capped exponential back-off, the one recipe for every retry loop.

``delay()`` gives the wait before the next attempt and doubles the next one up to ``cap``;
``reset()`` after a success. With ``jitter`` the wait is drawn from [d/2, d] so that many
clients retrying at once spread out.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    first: float = 1.0
    cap: float = 30.0
    factor: float = 2.0
    jitter: bool = False
    _next: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.cap = max(self.cap, self.first)
        self._next = self.first

    def delay(self) -> float:
        """The wait before the next attempt; the one after it grows (up to ``cap``)."""
        d = self._next
        self._next = min(self._next * self.factor, self.cap)
        return d * (0.5 + random.random() / 2) if self.jitter else d

    def reset(self) -> None:
        self._next = self.first

    async def sleep(self, at_least: float = 0.0) -> float:
        """Wait :meth:`delay` (or ``at_least``, a peer's own hint, if longer); returns it."""
        wait = max(self.delay(), at_least)
        await asyncio.sleep(wait)
        return wait
