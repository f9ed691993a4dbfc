"""Micro-batching: items that share a key are handed out together, up to ``max_batch``,
after waiting at most ``max_wait_s`` for the oldest of them."""

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

    def cap(self, key: K) -> int:
        return (
            self.max_batch if self.limit is None else max(1, min(self.max_batch, self.limit(key)))
        )

    def __len__(self) -> int:
        return sum(len(items) for _, items in self._groups.values())

    def put(self, key: K, item: T) -> None:
        if key in self._groups:
            self._groups[key][1].append(item)
        else:
            self._groups[key] = (time.monotonic(), [item])
        self._changed.set()

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
        """The next batch: a full group at once, else the oldest group when its wait is up.

        With ``flush`` (draining on shutdown) the oldest group is handed out without waiting.
        """
        while True:
            for key, (_, items) in self._groups.items():
                if len(items) >= self.cap(key):
                    return self._take(key)
            if self._groups:
                key, (since, _) = next(iter(self._groups.items()))
                remaining = since + self.max_wait_s - time.monotonic()
                if flush or remaining <= 0:
                    return self._take(key)
            else:
                remaining = None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
