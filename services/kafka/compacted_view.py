"""Read a compacted topic (key -> latest value) into memory, once or continuously."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.config.settings import Settings
from services.kafka.clients import assign_held, make_follower, partition_ids

__all__ = ["CompactedView"]

T = TypeVar("T")
log = structlog.get_logger("lanes.view")


class CompactedView(Generic[T]):
    """``items`` maps each key to the parsed latest value; tombstones delete the key."""

    def __init__(self, settings: Settings, topic: str, parse: Callable[[bytes], T]) -> None:
        self.settings = settings
        self.topic = topic
        self.parse = parse
        self.items: dict[str, T] = {}
        self.caught_up = asyncio.Event()
        self._live: AIOKafkaConsumer | None = None  # the follower's consumer, while it runs
        self._sync_lock = asyncio.Lock()

    def _consumer(self, *, one_shot: bool = False) -> AIOKafkaConsumer:
        return make_follower(self.settings, "lanes-compacted-view", one_shot=one_shot)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        k = key.decode()
        if value is None:
            self.items.pop(k, None)
            return
        try:
            self.items[k] = self.parse(value)
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop the view
            log.warning("view_record_skipped", topic=self.topic, key=k, error=str(exc)[:300])

    async def _assign(
        self, consumer: AIOKafkaConsumer, partitions: Iterable[int] | None
    ) -> dict[TopicPartition, int]:
        if partitions is None:
            partitions = await partition_ids(self.settings, self.topic)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        assign_held(consumer, tps)
        if not tps:
            return {}
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        consumer.resume(*tps)
        return ends

    async def load(self, partitions: Iterable[int] | None = None) -> dict[str, T]:
        """Read the given partitions (default: all) from the beginning to their current end."""
        consumer = self._consumer(one_shot=True)
        await consumer.start()
        try:
            ends = await self._assign(consumer, partitions)
            await self._read_until(consumer, ends)
        finally:
            await consumer.stop()
        return self.items

    async def _read_until(
        self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
    ) -> None:
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    self._apply(r.key, r.value)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}

    async def follow(self, stop: asyncio.Event | None = None) -> None:
        """Load everything, set ``caught_up``, then keep applying new records until cancelled."""
        consumer = self._consumer()
        await consumer.start()
        try:
            ends = await self._assign(consumer, None)
            await self._read_until(consumer, ends)
            self._live = consumer
            self.caught_up.set()
            while stop is None or not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for r in records:
                        self._apply(r.key, r.value)
        finally:
            self._live = None
            await consumer.stop()

    async def sync(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the follower has applied everything written to
        the topic before this call: read-your-writes for a record just published elsewhere.
        False when it could not (not following, or the bound passed). One sync at a time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout(timeout_s), self._sync_lock:
                if self._live is None:
                    return False
                consumer: AIOKafkaConsumer = self._live
                ends = await consumer.end_offsets(list(consumer.assignment()))
                while True:
                    if self._live is not consumer:
                        return False
                    behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
                    if not behind or loop.time() >= deadline:
                        return not behind
                    await asyncio.sleep(0.02)
        except TimeoutError:
            return False
