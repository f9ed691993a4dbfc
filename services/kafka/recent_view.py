"""The recent part of a compacted topic, in memory: key -> a digest of its latest value,
for the records written within ``window_s``.

It starts reading at the offsets of ``now - window`` (``offsets_for_times``), not at the
beginning, and forgets a key whose latest record has aged out, so its memory and its
start-up time grow with the topic's rate, never with its history. ``digest`` returns None
for a value not worth keeping (the key is dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog
from aiokafka import TopicPartition

from services.config.settings import Settings
from services.kafka.clients import assign_held, make_follower, partition_ids

__all__ = ["RecentView"]

T = TypeVar("T")
log = structlog.get_logger("lanes.view")


class RecentView(Generic[T]):
    def __init__(
        self,
        settings: Settings,
        topic: str,
        digest: Callable[[bytes], T | None],
        window_s: float,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.digest = digest
        self.window_ms = int(window_s * 1000)
        # key -> (record timestamp ms, digest), oldest first
        self._items: OrderedDict[str, tuple[int, T]] = OrderedDict()
        self.caught_up = asyncio.Event()

    def get(self, key: str) -> T | None:
        item = self._items.get(key)
        return item[1] if item is not None else None

    def __len__(self) -> int:
        return len(self._items)

    def _apply(self, key: bytes | None, value: bytes | None, ts_ms: int) -> None:
        if key is None:
            return
        k = key.decode()
        self._items.pop(k, None)
        if value is None:
            return
        try:
            digest = self.digest(value)
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop the view
            log.warning("view_record_skipped", topic=self.topic, key=k, error=str(exc)[:300])
            return
        if digest is not None:
            self._items[k] = (ts_ms, digest)

    def _expire(self) -> None:
        horizon = int(time.time() * 1000) - self.window_ms
        while self._items:
            key, (ts, _) = next(iter(self._items.items()))
            if ts >= horizon:
                break
            del self._items[key]

    async def follow(self) -> None:
        consumer = make_follower(self.settings, "lanes-recent-view", auto_offset_reset="latest")
        await consumer.start()
        try:
            tps = [
                TopicPartition(self.topic, p)
                for p in await partition_ids(self.settings, self.topic)
            ]
            assign_held(consumer, tps)
            since = int(time.time() * 1000) - self.window_ms
            found = await consumer.offsets_for_times({tp: since for tp in tps})
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
            consumer.resume(*tps)
            remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                for records in batches.values():
                    for r in records:
                        self._apply(r.key, r.value, r.timestamp)
                self._expire()
                if remaining:
                    remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
                if not remaining and not self.caught_up.is_set():
                    log.info("view_caught_up", topic=self.topic, recent=len(self._items))
                    self.caught_up.set()
        finally:
            await consumer.stop()
