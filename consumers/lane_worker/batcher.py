"""Micro-batching: items that share a key are handed out together, up to ``max_batch``,
after waiting at most ``max_wait_s`` for the oldest of them.

The wait is for mates that are coming: when the last two items arrived further apart than
``max_wait_s``, a lone item is handed out at once. A trickle of drafts on an idle GPU then
starts each at once rather than 15 ms later; a burst costs one item alone (its second item
waits for mates again), and under load batches form from what arrives while the device
renders the one before."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["MicroBatcher"]

K = TypeVar("K", bound=Hashable)  # what items batch together by
T = TypeVar("T")


class MicroBatcher(Generic[K, T]):
    def __init__(
        self, max_batch: int, max_wait_s: float, limit: Callable[[K], int] | None = None
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        # Per key, a smaller cap than max_batch (a version whose batches do not pay).
        self.limit = limit
        # key -> (arrival time of the oldest item, items), oldest group first
        self._groups: OrderedDict[K, tuple[float, list[T]]] = OrderedDict()
        self._changed = asyncio.Event()
        self._last_put: float | None = None
        self._gap_s: float | None = None  # between the last two puts

    def cap(self, key: K) -> int:
        return (
            self.max_batch if self.limit is None else max(1, min(self.max_batch, self.limit(key)))
        )

    def __len__(self) -> int:
        return sum(len(items) for _, items in self._groups.values())

    def put(self, key: K, item: T) -> None:
        now = time.monotonic()
        if self._last_put is not None:
            self._gap_s = now - self._last_put
        self._last_put = now
        if key in self._groups:
            self._groups[key][1].append(item)
        else:
            self._groups[key] = (now, [item])
        self._changed.set()

    def mates_expected(self) -> bool:
        """The last two items arrived within ``max_wait_s`` of each other (or nothing is
        known yet): waiting may fill a batch."""
        return self._gap_s is None or self._gap_s < self.max_wait_s

    def _take(self, key: K) -> list[T]:
        since, items = self._groups[key]
        cap = self.cap(key)
        batch, rest = items[:cap], items[cap:]
        if rest:
            self._groups[key] = (since, rest)
            self._groups.move_to_end(key, last=False)  # the rest is still the oldest work
        else:
            del self._groups[key]
        return batch

    async def next_batch(self, flush: bool = False) -> list[T]:
        """The next batch: a full group at once, else the oldest group when its wait is up
        (at once when no mates are expected).

        With ``flush`` (draining on shutdown) the oldest group is handed out without waiting.
        """
        while True:
            for key, (_, items) in self._groups.items():
                if len(items) >= self.cap(key):
                    return self._take(key)
            if self._groups:
                key, (since, _) = next(iter(self._groups.items()))
                remaining = since + self.max_wait_s - time.monotonic()
                if flush or remaining <= 0 or not self.mates_expected():
                    return self._take(key)
            else:
                remaining = None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
