"""A lane worker's offsets: records finish out of order (batches, a cascade's fast drafts
beside slow finals), so a partition's offset is committed once every earlier record of it
is done (``OffsetTracker``) and the job's outputs are acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from consumers.machinery.loop import commit_or_skip
from consumers.machinery.offsets import OffsetTracker

__all__ = ["Commits"]

log = structlog.get_logger("lanes.worker")


class Commits(ConsumerRebalanceListener):  # type: ignore[misc]
    """The offsets of one group membership; also its rebalance listener (a revoked
    partition's held jobs get a short while to finish and commit)."""

    def __init__(self, revoke_wait_s: float, on_revoked: Callable[[], None]) -> None:
        self.revoke_wait_s = revoke_wait_s
        self.on_revoked = on_revoked
        self.consumer: AIOKafkaConsumer | None = None
        self.tracker = OffsetTracker()
        self.lock = asyncio.Lock()
        self.joined = False  # the membership has had its first assignment

    def attach(self, consumer: AIOKafkaConsumer) -> None:
        """A new membership: it starts from the group's commits."""
        self.consumer = consumer
        self.tracker = OffsetTracker()
        self.joined = False

    def add(self, tp: TopicPartition, offset: int) -> None:
        self.tracker.add(tp, offset)

    def done(self, tp: TopicPartition, offset: int) -> None:
        self.tracker.done(tp, offset)

    async def commit(self) -> None:
        if self.consumer is None:
            return
        async with self.lock:
            assigned = self.consumer.assignment()
            points = {tp: off for tp, off in self.tracker.to_commit().items() if tp in assigned}
            if points and await commit_or_skip(self.consumer, points):
                self.tracker.mark_committed(points)

    async def finish(self, tp: TopicPartition, offset: int) -> None:
        """A record that needed nothing more (skipped, dead-lettered, failed at intake)."""
        self.done(tp, offset)
        await self.commit()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        gone = set(revoked)
        deadline = time.monotonic() + self.revoke_wait_s
        while self.tracker.pending(gone) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.commit()
        self.tracker.forget(gone)
        self.on_revoked()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.joined = True
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))
