"""Start, run and stop one consumer group member: clients, ops endpoints, signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from prometheus_client import CollectorRegistry

from consumers.machinery.loop import ConsumeLoop, Handler, LoopMetrics, Parser
from schemas.topics import Topics
from services.config.settings import Settings
from services.kafka.clients import make_consumer, make_producer
from services.process.ops_server import serve_ops
from services.process.tuning import freeze_startup_heap

__all__ = ["stop_on_signals", "run_consumer", "run_member", "MemberLoop"]

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


class MemberLoop(Protocol):
    ready: bool

    async def run(self, stop: asyncio.Event) -> None: ...


LoopFactory = Callable[[AIOKafkaConsumer, AIOKafkaProducer, str, str], MemberLoop]


async def run_member(
    settings: Settings,
    *,
    name: str,
    topics: Sequence[str],
    make_loop: LoopFactory,
    registry: CollectorRegistry | None = None,
    stop: asyncio.Event | None = None,
    consumer_options: dict[str, object] | None = None,
    listener: ConsumerRebalanceListener | None = None,
) -> None:
    """Run one member of group ``lanes-<name>`` (clients, ops endpoints, signals) with the
    loop ``make_loop(consumer, producer, group, dlq_topic)`` until ``stop``."""
    stop = stop_on_signals(stop)
    registry = registry or CollectorRegistry()
    group = settings.group(f"lanes-{name}")
    producer = make_producer(settings, client_id=f"lanes-{name}")
    consumer = make_consumer(
        settings, group=group, client_id=f"lanes-{name}", **(consumer_options or {})
    )
    consumer.subscribe(topics=list(topics), listener=listener)
    loop = make_loop(consumer, producer, group, Topics(settings.topic_prefix).dlq)
    await producer.start()
    try:
        await consumer.start()
        freeze_startup_heap()  # a long-lived member: later collections skip the imports
        ops = asyncio.create_task(
            serve_ops(settings.metrics_host, settings.metrics_port, registry, lambda: loop.ready)
        )
        log.info("consumer_started", group=group, topics=list(topics))
        runner = asyncio.create_task(loop.run(stop))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()  # surface a crash
            else:
                await runner  # finishes the batch in hand, then returns
        finally:
            for task in (ops, stopper, runner):
                task.cancel()
            await asyncio.gather(ops, stopper, runner, return_exceptions=True)
    finally:
        await consumer.stop()
        await producer.stop()
        log.info("consumer_stopped", group=group)


async def run_consumer(
    settings: Settings,
    *,
    name: str,
    topics: Sequence[str],
    parse: Parser,
    handler: Handler,
    registry: CollectorRegistry | None = None,
    stop: asyncio.Event | None = None,
    max_records: int = 16,
    consumer_options: dict[str, object] | None = None,
    listener: ConsumerRebalanceListener | None = None,
) -> None:
    """Run the consume loop for group ``name`` until ``stop`` is set (or SIGTERM/SIGINT)."""
    registry = registry or CollectorRegistry()
    metrics = LoopMetrics(registry)
    await run_member(
        settings,
        name=name,
        topics=topics,
        registry=registry,
        stop=stop,
        consumer_options=consumer_options,
        listener=listener,
        make_loop=lambda consumer, producer, group, dlq: ConsumeLoop(
            consumer,
            producer,
            group=group,
            parse=parse,
            handler=handler,
            dlq_topic=dlq,
            metrics=metrics,
            max_records=max_records,
        ),
    )
