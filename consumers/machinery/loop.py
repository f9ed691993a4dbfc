"""The consume loop every consumer group shares.

For each fetched batch: parse, handle, publish the handler's outputs, wait until the
broker has acknowledged every one of them, and only then commit the source offsets.
An event that cannot be parsed or processed goes to ``lanes.dlq`` (with the error and its
source topic/partition/offset and raw bytes) and the loop carries on.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    RebalanceInProgressError,
    TopicAuthorizationFailedError,
)
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from producers.tracing import context_from_headers, trace_headers
from schemas.exceptions import LanesError, PoisonEvent
from schemas.records import DeadLetter

__all__ = [
    "MessageContext",
    "Output",
    "ConsumeLoop",
    "LoopMetrics",
    "Handler",
    "dead_letter",
    "bind_record",
    "enqueue",
    "publish_all",
    "commit_or_skip",
]

log = structlog.get_logger("lanes.loop")


@dataclass(frozen=True)
class Output:
    topic: str
    key: str | bytes | None
    value: bytes | None
    # The trace context it continues (W3C traceparent): by default that of the span current
    # where it is made (the hop handling the record that caused it).
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=trace_headers)


@dataclass(frozen=True)
class MessageContext:
    """Transport metadata of the message being handled (never part of a payload).

    ``publish`` sends an output right away and waits for the broker's ack (progress events
    such as render.started); the handler's returned outputs are sent after it returns.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    publish: Callable[[Output], Awaitable[None]]


Handler = Callable[[Any, MessageContext], Awaitable[Sequence[Output]]]
Parser = Callable[[bytes], Any]


@dataclass(frozen=True)
class Tombstone:
    """A compacted topic's delete marker (no value), for a loop with ``tombstones=True``:
    the key (a job id on ``lanes.jobs``) was deleted by retention."""

    key: str


class LoopMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "lanes_consumer_events_total",
            "Events handled by a consumer group",
            ["group", "outcome"],
            registry=registry,
        )
        self.handle_seconds = Histogram(
            "lanes_consumer_handle_seconds",
            "Time to handle one event and publish its outputs",
            ["group"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class ConsumeLoop:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        *,
        group: str,
        parse: Parser,
        handler: Handler,
        dlq_topic: str,
        metrics: LoopMetrics,
        max_records: int = 16,
        transient_retries: int = 3,
        tombstones: bool = False,
    ) -> None:
        self.tombstones = tombstones  # hand delete markers to the handler as Tombstone
        self.consumer = consumer
        self.producer = producer
        self.group = group
        self.span_name = group.rsplit(".", 1)[-1]  # without a test's prefix: lanes-router
        self.parse = parse
        self.handler = handler
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self.max_records = max_records
        self.transient_retries = transient_retries
        self.ready = False

    fetch_timeout_ms = 250

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.before_fetch()
            batches = await self.consumer.getmany(
                timeout_ms=self.fetch_timeout_ms, max_records=self.max_records
            )
            self.ready = True
            for tp, records in batches.items():
                await self._process_partition(tp, records)

    # ---- the hooks a variant overrides (``consumers.machinery.delayed``) -------------------

    def before_fetch(self) -> None:
        """Called before each fetch."""

    def due(self, tp: TopicPartition, record: ConsumerRecord, event: Any) -> bool:
        """Whether ``event`` is handled now. A variant that says no has arranged for the
        record to be fetched again; the rest of this partition's batch waits with it."""
        return True

    # ---- the loop's own steps -------------------------------------------------------------

    async def _process_partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        outputs: list[Output] = []
        handled: int | None = None
        for record in records:
            bind_record(record, self.group)
            try:
                if record.value is None and self.tombstones and record.key:
                    event: Any = Tombstone(record.key.decode())
                elif record.value is None:
                    raise PoisonEvent("empty message value")
                else:
                    event = self.parse(record.value)
            except Exception as exc:  # noqa: BLE001 - an event that cannot be parsed: DLQ
                outputs.append(self._dead_letter(record, exc))
                handled = record.offset
                continue
            if not self.due(tp, record, event):
                break
            outputs += await self._handle(record, event)
            handled = record.offset
        await publish_all(self.producer, outputs)
        if handled is not None:
            await commit_or_skip(self.consumer, {tp: handled + 1})

    async def _handle(self, record: ConsumerRecord, event: Any) -> Sequence[Output]:
        ctx = MessageContext(
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.timestamp,
            self._publish_now,
        )
        job_id = getattr(event, "job_id", None)
        if job_id:
            structlog.contextvars.bind_contextvars(job_id=job_id)
        started = time.perf_counter()
        # The hop continues the trace the record carries (aiokafka's instrumentation would
        # close its span inside getmany, before this processing: contrib issues 3465, 3026).
        with trace.get_tracer("lanes").start_as_current_span(
            f"{self.span_name} {getattr(event, 'type', None) or record.topic.rsplit('.', 1)[-1]}",
            context=context_from_headers(record.headers, job_id),
            kind=trace.SpanKind.CONSUMER,
            attributes=span_attributes(record, event),
        ) as span:
            try:
                outputs = await self._with_retries(event, ctx)
                self.metrics.events.labels(self.group, "ok").inc()
                return outputs
            except Exception as exc:  # noqa: BLE001 - any failure of one event goes to the DLQ
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                return [self._dead_letter(record, exc)]
            finally:
                self.metrics.handle_seconds.labels(self.group).observe(
                    time.perf_counter() - started
                )

    def _dead_letter(self, record: ConsumerRecord, exc: Exception) -> Output:
        self.metrics.events.labels(self.group, "dlq").inc()
        log.warning("event_dead_lettered", error=str(exc)[:500], error_type=type(exc).__name__)
        return dead_letter(record, exc, self.group, self.dlq_topic)

    async def _publish_now(self, out: Output) -> None:
        await self.producer.send_and_wait(
            out.topic, value=out.value, key=_key_bytes(out.key), headers=list(out.headers) or None
        )

    async def _with_retries(self, event: Any, ctx: MessageContext) -> Sequence[Output]:
        attempt = 0
        while True:
            try:
                return await self.handler(event, ctx)
            except LanesError as exc:
                attempt += 1
                if not exc.retriable or attempt > self.transient_retries:
                    raise
                delay = min(5.0, 0.2 * 2**attempt)
                log.info("transient_error_retry", attempt=attempt, delay_s=delay, error=str(exc))
                await asyncio.sleep(delay)


def span_attributes(record: ConsumerRecord, event: Any) -> dict[str, Any]:
    """What a hop's span says of the record and its job: never a prompt, key or image."""
    attrs: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.destination.name": record.topic,
        "messaging.kafka.partition": record.partition,
        "messaging.kafka.offset": record.offset,
    }
    for name in ("job_id", "lane", "model", "version", "attempt", "tenant"):
        value = getattr(event, name, None)
        if value is None and name == "tenant":
            value = getattr(getattr(event, "spec", None), "tenant", None)
        if isinstance(value, str | int):
            attrs[f"lanes.{name}"] = value
    return attrs


async def enqueue(
    producer: AIOKafkaProducer, outputs: Sequence[Output]
) -> list[asyncio.Future[Any]]:
    """Hand outputs to the producer in order; the futures resolve on the broker's acks."""
    return [
        await producer.send(
            o.topic, value=o.value, key=_key_bytes(o.key), headers=list(o.headers) or None
        )
        for o in outputs
    ]


async def publish_all(producer: AIOKafkaProducer, outputs: Sequence[Output]) -> None:
    """Send in order and wait until the broker has acknowledged every one (acks=all)."""
    try:
        futures = await enqueue(producer, outputs)
        if futures:
            await asyncio.gather(*futures)
    except TopicAuthorizationFailedError as exc:
        exc.lanes_operation = "Write"  # for the member's report
        raise


async def commit_or_skip(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
    """Commit; when the partitions moved to another member, log and carry on: it redelivers
    from the last commit, and handlers are idempotent, so nothing is lost or doubled."""
    try:
        await consumer.commit(offsets)
        return True
    except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
        log.warning(
            "commit_skipped",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in offsets),
            error=str(exc)[:300],
        )
        return False


def dead_letter(record: ConsumerRecord, exc: Exception, group: str, dlq_topic: str) -> Output:
    """The lanes.dlq record for an event that could not be parsed or processed."""
    letter = DeadLetter(
        error=_describe(exc),
        error_type=type(exc).__name__,
        consumer_group=group,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        key_b64=base64.b64encode(record.key).decode() if record.key else None,
        value_b64=base64.b64encode(record.value).decode() if record.value else None,
    )
    return Output(dlq_topic, record.key, letter.model_dump_json().encode())


def bind_record(record: ConsumerRecord, group: str) -> None:
    """Per message: clear the log context, then bind job id, topic, partition and offset."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        group=group,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        job_id=record.key.decode(errors="replace") if record.key else None,
    )


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:10]
        ]
        return "invalid event: " + "; ".join(parts)
    return f"{type(exc).__name__}: {exc}"[:2000]
