"""Webhook retries [group lanes-webhooks-retry]: the delay topic ``lanes.webhooks.retry``.

Each record is a message due at ``due_at``. A partition whose next record is not due yet
is paused and the consumer seeks back to that record; it is resumed when the record falls
due. Nothing sleeps: the loop keeps fetching the other partitions and heartbeating. An
attempt's outcome is published (delivery record, next attempt or DLQ) and acknowledged
before its offset is committed.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError
from prometheus_client import CollectorRegistry

from consumers.loop import Output, bind_record, dead_letter
from consumers.runtime import stop_on_signals
from consumers.webhooks import WebhookMetrics, after_attempt, make_sender
from schemas.events import utcnow
from schemas.records import WebhookMessage
from schemas.topics import Topics
from services.kafka_clients import make_consumer, make_producer
from services.observability import serve_ops
from services.settings import Settings
from services.webhooks import WebhookSender

__all__ = ["run", "RetryLoop"]

log = structlog.get_logger("lanes.webhooks.retry")


class RetryLoop:
    def __init__(self, settings: Settings, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                 sender: WebhookSender, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.group = settings.group("lanes-webhooks-retry")
        self.consumer = consumer
        self.producer = producer
        self.sender = sender
        self.metrics = WebhookMetrics(registry)
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

    async def _process(self, tp: TopicPartition, record: object) -> bool:
        bind_record(record, self.group)  # type: ignore[arg-type]
        try:
            msg = WebhookMessage.model_validate_json(record.value or b"")  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a bad record goes to lanes.dlq
            log.warning("event_dead_lettered", error=str(exc)[:300])
            await self._publish([dead_letter(record, exc, self.group, self.topics.dlq)])  # type: ignore[arg-type]
            await self._commit(tp, record.offset + 1)  # type: ignore[attr-defined]
            return True
        if msg.due_at > utcnow():
            self.consumer.seek(tp, record.offset)  # type: ignore[attr-defined]
            self.consumer.pause(tp)
            self.resume_at[tp] = msg.due_at
            return False
        result = await self.sender.attempt(msg.url, msg.webhook_id, msg.body)
        await self._publish(after_attempt(self.settings, msg, result, self.metrics))
        await self._commit(tp, record.offset + 1)  # type: ignore[attr-defined]
        return True

    async def _publish(self, outputs: list[Output]) -> None:
        futures = [await self.producer.send(o.topic, value=o.value,
                                            key=o.key.encode() if isinstance(o.key, str) else o.key)
                   for o in outputs]
        await asyncio.gather(*futures)

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            await self.consumer.commit({tp: offset})
        except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
            log.warning("commit_skipped", error=str(exc)[:300])


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop_on_signals(stop)
    registry = CollectorRegistry()
    topics = Topics(settings.topic_prefix)
    sender = make_sender(settings)
    producer = make_producer(settings, client_id="lanes-webhooks-retry")
    consumer = make_consumer(settings, group=settings.group("lanes-webhooks-retry"),
                             client_id="lanes-webhooks-retry")
    consumer.subscribe([topics.webhooks_retry])
    loop = RetryLoop(settings, consumer, producer, sender, registry)
    await producer.start()
    ops = asyncio.create_task(serve_ops(settings.metrics_host, settings.metrics_port, registry,
                                        lambda: loop.ready))
    try:
        await consumer.start()
        log.info("consumer_started", group=loop.group, topics=[topics.webhooks_retry])
        await loop.run(stop)
    finally:
        ops.cancel()
        await asyncio.gather(ops, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
        await sender.aclose()
