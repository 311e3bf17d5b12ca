"""Token buckets: a per-device uplink budget and a per-source-address one (pure, no I/O).

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request
takes one. :meth:`TokenBuckets.take` returns 0 when allowed, else the whole seconds until a
token is back (the Max-Age of a 4.29). Buckets that are full again are forgotten when the
table grows past ``max_keys``, so a flood of distinct keys costs bounded memory.
"""

from __future__ import annotations

import math


class TokenBuckets:
    """Buckets by key; each ``(tokens, last time)``; the clock is the caller's."""

    __slots__ = ("_buckets", "max_keys")

    def __init__(self, max_keys: int = 200_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self.max_keys = max_keys

    def take(self, key: str, rate: float, burst: float, now: float) -> int:
        """0 if a token was taken, else seconds (>= 1) until one is available."""
        if rate <= 0:
            return 0
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= 1.0:
            if key not in self._buckets and len(self._buckets) >= self.max_keys:
                self._forget_full(now, rate, burst)
            self._buckets[key] = (tokens - 1.0, now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))

    def _forget_full(self, now: float, rate: float, burst: float) -> None:
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * rate >= burst:
                del self._buckets[key]
        if len(self._buckets) >= self.max_keys:  # all busy: drop the oldest half
            for key in list(self._buckets)[: self.max_keys // 2]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
