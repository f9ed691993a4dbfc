"""Failed authentication, throttled per client address, so keys cannot be guessed at line
rate: each address may fail ``burst`` times, then once every ``1/rate_per_s`` seconds;
beyond that it gets 429 with Retry-After before its key is even looked at.

Bounded: the most recently failing ``max_clients`` addresses are remembered, each for as
long as its bucket takes to refill.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TTLCache

__all__ = ["FailureThrottle"]


class FailureThrottle:
    def __init__(
        self,
        burst: int,
        rate_per_s: float,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = float(burst)
        self.rate = rate_per_s
        self.clock = clock
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(
            maxsize=max_clients, ttl=burst / rate_per_s + 1, timer=clock
        )

    def _tokens(self, client: str) -> float:
        tokens, at = self._buckets.get(client, (self.burst, self.clock()))
        return min(self.burst, tokens + (self.clock() - at) * self.rate)

    def wait_s(self, client: str) -> float | None:
        """None when ``client`` may try; else seconds until it may fail again."""
        tokens = self._tokens(client)
        return None if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, client: str) -> None:
        self._buckets[client] = (max(0.0, self._tokens(client) - 1), self.clock())
