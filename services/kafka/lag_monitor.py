"""Each lane's consumer-group lag (end offsets minus the group's committed offsets), for
admission and the autoscaling signal. One admin client and one consumer stay open between
polls; a partition the group never committed counts from its beginning."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from producers.kafka import make_admin, make_raw_consumer
from schemas.topics import Topics
from services.config.settings import Settings

__all__ = ["LagMonitor", "spill_key"]

log = structlog.get_logger("lanes.lag")


def spill_key(lane: str) -> str:
    return f"{lane}.spill"


class LagMonitor:
    def __init__(
        self, settings: Settings, lanes: Sequence[str], every_s: float, spill: Sequence[str] = ()
    ) -> None:
        topics = Topics(settings.topic_prefix)
        self.settings = settings
        self.every_s = every_s
        # key -> (group, topic): a lane's own queue under its name, its spill queue under
        # spill_key(lane).
        self.wanted = {lane: (settings.groups.lane(lane), topics.lane(lane)) for lane in lanes}
        self.wanted.update(
            {spill_key(lane): (settings.groups.spill(lane), topics.spill(lane)) for lane in spill}
        )
        self.lags: dict[str, int] = {}
        # Jobs this process sent to a queue since the last measurement began: what the
        # broker's numbers do not show yet (a burst moves faster than the poll).
        self.noted: dict[str, int] = {}
        self.measured = asyncio.Event()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._parts: dict[str, list[TopicPartition]] = {}
        self._coordinators: dict[str, int] = {}  # group -> its coordinator's node id

    def lag(self, lane: str) -> int:
        """The lane's own queue: jobs not yet committed by its group, as last measured plus
        those this process has sent since."""
        return self.lags.get(lane, 0) + self.noted.get(lane, 0)

    def spill_lag(self, lane: str) -> int:
        return self.lag(spill_key(lane))

    def note(self, key: str) -> None:
        """This process just sent a job to ``key``'s queue (a lane, or spill_key(lane))."""
        self.noted[key] = self.noted.get(key, 0) + 1

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            self._admin = make_admin(self.settings, request_timeout_ms=10000)
            self._consumer = make_raw_consumer(
                self.settings, group_id=None, enable_auto_commit=False
            )
            await self._admin.start()
            await self._consumer.start()
        return self._admin, self._consumer

    async def _partitions(self, admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
        if topic not in self._parts:
            (described,) = await admin.describe_topics([topic])
            if described.get("error_code", 0) != 0 or not described.get("partitions"):
                raise LookupError(f"topic {topic!r} does not exist")
            self._parts[topic] = [
                TopicPartition(topic, p["partition"]) for p in described["partitions"]
            ]
        return self._parts[topic]

    async def poll(self) -> dict[str, int]:
        """One measurement of every wanted lane: an offset fetch per group (to its cached
        coordinator) and one end-offsets request for all their partitions; beginnings only
        for partitions a group never committed."""
        admin, consumer = await self._clients()
        noted_before = dict(self.noted)
        parts = {
            key: await self._partitions(admin, topic) for key, (_, topic) in self.wanted.items()
        }
        starts: dict[TopicPartition, int] = {}
        for key, (group, _) in self.wanted.items():
            committed = await self._committed(admin, group, parts[key])
            for tp in parts[key]:
                meta = committed.get(tp)
                if meta is not None and meta.offset >= 0:
                    starts[tp] = meta.offset
        every = [tp for tps in parts.values() for tp in tps]
        ends = await consumer.end_offsets(every) if every else {}
        never = [tp for tp in every if tp not in starts]
        if never:
            starts.update(await consumer.beginning_offsets(never))
        lags = {key: sum(max(0, ends[tp] - starts[tp]) for tp in tps) for key, tps in parts.items()}
        self.lags = lags
        self.noted = {
            k: n - noted_before.get(k, 0)
            for k, n in self.noted.items()
            if n > noted_before.get(k, 0)
        }
        self.measured.set()
        return lags

    async def _committed(
        self, admin: AIOKafkaAdminClient, group: str, parts: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets, asked of its coordinator (found once; found again
        after any error, e.g. when the coordinator moved)."""
        coordinator = self._coordinators.get(group)
        if coordinator is None:
            coordinator = self._coordinators[group] = await admin.find_coordinator(group)
        try:
            offsets: dict[
                TopicPartition, OffsetAndMetadata
            ] = await admin.list_consumer_group_offsets(group, coordinator, partitions=parts)
            return offsets
        except Exception:
            self._coordinators.pop(group, None)
            raise

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._admin = self._consumer = None

    async def run(self) -> None:
        """Poll every ``every_s`` until cancelled; errors are logged, never fatal."""
        if not self.wanted:
            self.measured.set()  # nothing to measure: every lag is 0
        try:
            while True:
                if self.wanted:
                    try:
                        await self.poll()
                    except Exception as exc:  # noqa: BLE001 - a signal, never a reason to stop
                        log.warning("lag_unavailable", error=str(exc)[:300])
                        self._parts.clear()
                        await self.close()
                await asyncio.sleep(self.every_s)
        finally:
            await self.close()
