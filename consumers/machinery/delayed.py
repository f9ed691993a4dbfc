"""Delay topics: the consume loop for records that each carry a due time, never before it.

A variant of ``ConsumeLoop`` that overrides its two hooks. A partition whose next record is
not due is paused and the consumer seeks back to that record; the partition is resumed
before a fetch once the record falls due. Nothing sleeps: the loop keeps fetching other
partitions and the group keeps heartbeating. Outputs are acknowledged before offsets are
committed and a record that cannot be parsed goes to ``lanes.dlq``, as in every loop. Used
by webhook retries and by deferred (admission) jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from consumers.machinery.loop import ConsumeLoop, MessageContext, Output
from consumers.machinery.runtime import run_consumer
from schemas.events import utcnow
from services.config.settings import Settings

__all__ = ["DelayedLoop", "run_delayed"]

DueHandler = Callable[[Any], Awaitable[Sequence[Output]]]


class DelayedLoop(ConsumeLoop):
    fetch_timeout_ms = 200

    def __init__(self, *args: Any, due_at: Callable[[Any], datetime], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.due_at = due_at
        self.resume_at: dict[TopicPartition, datetime] = {}

    def before_fetch(self) -> None:
        now = utcnow()
        for tp, due in list(self.resume_at.items()):
            if due <= now:
                del self.resume_at[tp]
                if tp in self.consumer.assignment():
                    self.consumer.resume(tp)

    def due(self, tp: TopicPartition, record: ConsumerRecord, event: Any) -> bool:
        due = self.due_at(event)
        if due <= utcnow():
            return True
        self.consumer.seek(tp, record.offset)
        self.consumer.pause(tp)
        self.resume_at[tp] = due
        return False


async def run_delayed(
    settings: Settings,
    *,
    group: str,
    topic: str,
    parse: Callable[[bytes], Any],
    due: Callable[[Any], datetime],
    handle: DueHandler,
    stop: asyncio.Event | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Run ``group`` over the delay topic until ``stop`` (or SIGTERM/SIGINT)."""

    async def handler(item: Any, ctx: MessageContext) -> Sequence[Output]:
        return await handle(item)

    await run_consumer(
        settings,
        group=group,
        topics=[topic],
        parse=parse,
        handler=handler,
        stop=stop,
        registry=registry,
        max_records=32,
        loop_class=DelayedLoop,
        due_at=due,
    )
