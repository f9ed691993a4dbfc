"""Delay topics: consume records that each carry a due time, never before it.

A partition whose next record is not due is paused, and the consumer seeks back to that
record; the partition is resumed when the record falls due. Nothing sleeps: the loop keeps
fetching other partitions and the group keeps heartbeating. A record's outputs are
acknowledged by the broker before its offset is committed; a record that cannot be parsed
goes to ``lanes.dlq``. Used by webhook retries and by deferred (admission) jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from consumers.machinery.loop import Output, bind_record, commit_or_skip, dead_letter, publish_all
from consumers.machinery.runtime import run_member
from schemas.events import utcnow
from services.config.settings import Settings

__all__ = ["DelayedLoop", "run_delayed"]

log = structlog.get_logger("lanes.delayed")

DueHandler = Callable[[Any], Awaitable[Sequence[Output]]]


class DelayedLoop:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        *,
        group: str,
        dlq_topic: str,
        parse: Callable[[bytes], Any],
        due: Callable[[Any], datetime],
        handle: DueHandler,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.group = group
        self.dlq_topic = dlq_topic
        self.parse = parse
        self.due = due
        self.handle = handle
        self.resume_at: dict[TopicPartition, datetime] = {}
        self.ready = False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._resume_due()
            batches = await self.consumer.getmany(timeout_ms=200, max_records=32)
            self.ready = True
            for tp, records in batches.items():
                for record in records:
                    if not await self._process(tp, record):
                        break  # paused at a record not yet due

    def _resume_due(self) -> None:
        now = utcnow()
        for tp, due in list(self.resume_at.items()):
            if due <= now:
                del self.resume_at[tp]
                if tp in self.consumer.assignment():
                    self.consumer.resume(tp)

    async def _process(self, tp: TopicPartition, record: ConsumerRecord) -> bool:
        bind_record(record, self.group)
        try:
            item = self.parse(record.value or b"")
        except Exception as exc:  # noqa: BLE001 - a bad record goes to lanes.dlq
            log.warning("event_dead_lettered", error=str(exc)[:300])
            await publish_all(self.producer, [dead_letter(record, exc, self.group, self.dlq_topic)])
            await commit_or_skip(self.consumer, {tp: record.offset + 1})
            return True
        due = self.due(item)
        if due > utcnow():
            self.consumer.seek(tp, record.offset)
            self.consumer.pause(tp)
            self.resume_at[tp] = due
            return False
        await publish_all(self.producer, await self.handle(item))
        await commit_or_skip(self.consumer, {tp: record.offset + 1})
        return True


async def run_delayed(
    settings: Settings,
    *,
    name: str,
    topic: str,
    parse: Callable[[bytes], Any],
    due: Callable[[Any], datetime],
    handle: DueHandler,
    stop: asyncio.Event | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Run group ``lanes-<name>`` over the delay topic until ``stop`` (or SIGTERM/SIGINT)."""
    await run_member(
        settings,
        name=name,
        topics=[topic],
        registry=registry,
        stop=stop,
        make_loop=lambda consumer, producer, group, dlq: DelayedLoop(
            consumer, producer, group=group, dlq_topic=dlq, parse=parse, due=due, handle=handle
        ),
    )
