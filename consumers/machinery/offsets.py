"""Which offsets may be committed when jobs of one partition finish out of order.

A partition's commit point is its lowest offset still in flight (everything below it is
done), or one past the highest offset seen when nothing is in flight.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import TopicPartition

__all__ = ["OffsetTracker"]


class OffsetTracker:
    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        self._pending.get(tp, set()).discard(offset)

    def pending(self, tps: Iterable[TopicPartition] | None = None) -> int:
        keys = self._pending.keys() if tps is None else tps
        return sum(len(self._pending.get(tp, ())) for tp in keys)

    def to_commit(self) -> dict[TopicPartition, int]:
        """Commit points that moved since the last ``mark_committed``."""
        out = {}
        for tp, nxt in self._next.items():
            pending = self._pending.get(tp)
            point = min(pending) if pending else nxt
            if point > self._committed.get(tp, -1):
                out[tp] = point
        return out

    def mark_committed(self, points: dict[TopicPartition, int]) -> None:
        for tp, point in points.items():
            self._committed[tp] = max(self._committed.get(tp, -1), point)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """The partitions were revoked: their offsets are another member's business now."""
        for tp in tps:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
