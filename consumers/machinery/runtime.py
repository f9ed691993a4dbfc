"""Start, run and stop one consumer-group member: clients, ops endpoints, signals.

``Member`` is what every consumer process has around its loop, the lane worker's included:
the producer (started first, stopped last), ``/metrics`` ``/healthz`` ``/readyz``, the stop
event that SIGTERM and SIGINT set, and the start-up heap frozen once it is loaded.
``run_member`` adds one group membership and a loop (``ConsumeLoop`` or a variant);
``run_consumer`` is that with the plain loop and a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from consumers.machinery.loop import ConsumeLoop, Handler, LoopMetrics, Output, Parser, publish_all
from consumers.machinery.loop import enqueue as enqueue_outputs
from schemas.topics import Topics
from services.config.settings import Settings
from services.kafka.clients import denied, make_consumer, make_producer
from services.process.ops_server import serve_ops
from services.process.tuning import freeze_startup_heap

__all__ = [
    "stop_on_signals",
    "Member",
    "run_consumer",
    "run_member",
    "MemberLoop",
    "started_consumer",
]

log = structlog.get_logger("lanes.runtime")


def stop_on_signals(stop: asyncio.Event | None) -> asyncio.Event:
    """The given stop event, or a new one that SIGTERM and SIGINT set."""
    if stop is not None:
        return stop
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


class Member:
    """The producer, ops endpoints and stop event of one consumer process.

    ``async with Member(...) as member``: the producer is started on entry, the ops server
    serves ``ready()`` until exit, and the producer is stopped last. ``publish`` waits for
    the broker's acks; ``enqueue`` hands outputs over and returns their ack futures.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        stop: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.registry = registry
        self.ready = ready
        self.stop = stop_on_signals(stop)
        self.dlq_topic = Topics(settings.topic_prefix).dlq
        # The DLQ is the one topic every member may write; outputs add theirs as they go.
        self.producer = make_producer(settings, client_id=client_id, topics=[self.dlq_topic])
        self._ops: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Member:
        try:
            await self.producer.start()
        except Exception as exc:
            refused = denied(exc, self.settings, "Write")
            if refused is not None:
                raise refused from exc
            raise
        self._ops = asyncio.create_task(
            serve_ops(
                self.settings.process.metrics_host,
                self.settings.process.metrics_port,
                self.registry,
                self.ready,
            ),
            name=f"ops-{self.client_id}",
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ops is not None:
            self._ops.cancel()
            await asyncio.gather(self._ops, return_exceptions=True)
        await self.producer.stop()

    async def publish(self, outputs: Sequence[Output]) -> None:
        await publish_all(self.producer, outputs)

    async def enqueue(self, outputs: Sequence[Output]) -> list[asyncio.Future[Any]]:
        return await enqueue_outputs(self.producer, outputs)


class MemberLoop(Protocol):
    ready: bool

    async def run(self, stop: asyncio.Event) -> None: ...


LoopFactory = Callable[[AIOKafkaConsumer, AIOKafkaProducer, str], MemberLoop]


async def started_consumer(
    make: Callable[[], AIOKafkaConsumer], settings: Settings, bound_s: float = 120.0
) -> AIOKafkaConsumer:
    """A started consumer from ``make`` (built and subscribed). Joining the group while a
    broker is down or the group is rebalancing can fail (aiokafka's coordinator gives up
    with ``RebalanceInProgressError``, say): a member starting then is retried on a fresh
    consumer with backoff for up to ``bound_s``, not crashed; a refused right is not."""
    deadline = asyncio.get_running_loop().time() + bound_s
    delay = 0.5
    while True:
        consumer = make()
        try:
            await consumer.start()
            return consumer
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            refused = denied(exc, settings, "Read") is not None
            if refused or asyncio.get_running_loop().time() + delay > deadline:
                raise
            log.warning("consumer_start_retried", error=str(exc)[:300], retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def run_member(
    settings: Settings,
    *,
    group: str,
    topics: Sequence[str],
    make_loop: LoopFactory,
    registry: CollectorRegistry | None = None,
    stop: asyncio.Event | None = None,
    consumer_options: dict[str, object] | None = None,
    listener: ConsumerRebalanceListener | None = None,
) -> None:
    """Run one member of ``group`` with the loop ``make_loop(consumer, producer, dlq_topic)``
    until ``stop`` (or SIGTERM/SIGINT)."""
    registry = registry or CollectorRegistry()
    client_id = group.removeprefix(settings.cluster.group_prefix)

    def subscribed() -> AIOKafkaConsumer:
        made = make_consumer(settings, group=group, client_id=client_id, **(consumer_options or {}))
        made.subscribe(topics=list(topics), listener=listener)
        return made

    loop: MemberLoop | None = None
    member = Member(
        settings,
        client_id=client_id,
        registry=registry,
        stop=stop,
        ready=lambda: loop is not None and loop.ready,
    )
    async with member:
        try:
            consumer = await started_consumer(subscribed, settings)
        except Exception as exc:
            refused = denied(exc, settings, "Read")
            if refused is not None:
                raise refused from exc
            raise
        loop = make_loop(consumer, member.producer, member.dlq_topic)
        try:
            freeze_startup_heap()  # a long-lived member: later collections skip the imports
            log.info("consumer_started", group=group, topics=list(topics))
            runner = asyncio.create_task(loop.run(member.stop))
            stopper = asyncio.create_task(member.stop.wait())
            try:
                done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if runner in done:
                    runner.result()  # surface a crash
                else:
                    await runner  # finishes the batch in hand, then returns
            except Exception as exc:
                refused = denied(exc, settings, getattr(exc, "lanes_operation", "Read"))
                if refused is not None:
                    raise refused from exc
                raise
            finally:
                for task in (stopper, runner):
                    task.cancel()
                await asyncio.gather(stopper, runner, return_exceptions=True)
        finally:
            await consumer.stop()
            log.info("consumer_stopped", group=group)


async def run_consumer(
    settings: Settings,
    *,
    group: str,
    topics: Sequence[str],
    parse: Parser,
    handler: Handler,
    registry: CollectorRegistry | None = None,
    stop: asyncio.Event | None = None,
    max_records: int = 16,
    consumer_options: dict[str, object] | None = None,
    listener: ConsumerRebalanceListener | None = None,
    loop_class: type[ConsumeLoop] = ConsumeLoop,
    **loop_options: Any,
) -> None:
    """Run the consume loop (or the variant ``loop_class``, given ``loop_options``) for
    ``group`` until ``stop`` is set (or SIGTERM/SIGINT)."""
    registry = registry or CollectorRegistry()
    metrics = LoopMetrics(registry)
    await run_member(
        settings,
        group=group,
        topics=topics,
        registry=registry,
        stop=stop,
        consumer_options=consumer_options,
        listener=listener,
        make_loop=lambda consumer, producer, dlq: loop_class(
            consumer,
            producer,
            group=group,
            parse=parse,
            handler=handler,
            dlq_topic=dlq,
            metrics=metrics,
            max_records=max_records,
            **loop_options,
        ),
    )
