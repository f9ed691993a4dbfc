"""The shared consume machinery on the real broker, without the stack: the consume loop,
its delay-topic variant, and the lag monitor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from consumers.machinery.delayed import run_delayed
from consumers.machinery.loop import MessageContext, Output
from consumers.machinery.runtime import Member, run_consumer
from producers.kafka import make_admin, make_producer, make_raw_consumer
from schemas.exceptions import PoisonEvent, TransientError
from schemas.records import DeadLetter
from schemas.topics import Topics, TopicSpec
from services.config.settings import Settings
from services.kafka.clients import ensure_topics
from services.kafka.lag_monitor import LagMonitor
from tests.support import produce_raw, read_topic, wait_until

pytestmark = pytest.mark.kafka


async def _topics(settings: Settings, *names: str, partitions: int = 1) -> None:
    topics = Topics(settings.topic_prefix)
    await ensure_topics(
        settings,
        [
            TopicSpec(topics.dlq, partitions=1),
            *(TopicSpec(n, partitions=partitions) for n in names),
        ],
    )


async def _committed(settings: Settings, group: str, topic: str) -> int:
    admin = make_admin(settings)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, 0)]
        )
    finally:
        await admin.close()
    meta = offsets.get(TopicPartition(topic, 0))
    return meta.offset if meta is not None else -1


async def test_consume_loop_publishes_then_commits_dead_letters_and_retries_transients(
    settings: Settings,
) -> None:
    source, out = f"{settings.topic_prefix}in", f"{settings.topic_prefix}out"
    await _topics(settings, source, out)
    group = settings.groups.router  # any group id under the test's prefix
    tries: dict[str, int] = {}

    async def handler(event: dict[str, Any], ctx: MessageContext) -> Sequence[Output]:
        n = event["n"]
        tries[n] = tries.get(n, 0) + 1
        if n == "poison":
            raise PoisonEvent("cannot process this one")
        if n == "flaky" and tries[n] < 3:
            raise TransientError("the store is down for now")
        return [Output(out, n, json.dumps(event).encode())]

    for n in ("a", "poison", "flaky", "b"):
        await produce_raw(settings, source, json.dumps({"n": n}).encode(), n.encode())
    await produce_raw(settings, source, b"{not json", b"bad")
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(
            settings,
            group=group,
            topics=[source],
            parse=json.loads,
            handler=handler,
            stop=stop,
            registry=CollectorRegistry(),
        )
    )
    try:

        async def all_committed() -> bool:
            try:
                return await _committed(settings, group, source) == 5
            except Exception:  # noqa: BLE001 - the group coordinator may not be up yet
                return False

        await wait_until(all_committed, timeout=60, what="5 offsets committed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    outs = [r.key.decode() for r in await read_topic(settings, out)]
    assert outs == ["a", "flaky", "b"]  # in order, the transient one after its retries
    assert tries == {"a": 1, "poison": 1, "flaky": 3, "b": 1}  # a poison event is not retried
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(settings, Topics(settings.topic_prefix).dlq)
    ]
    assert sorted((x.source_offset, x.consumer_group) for x in letters) == [(1, group), (4, group)]
    by_offset = {x.source_offset: x for x in letters}
    assert by_offset[1].error_type == "PoisonEvent" and "cannot process" in by_offset[1].error
    assert by_offset[4].error_type == "JSONDecodeError" and by_offset[4].value_b64


async def test_delay_loop_holds_a_record_until_due_without_blocking_other_partitions(
    settings: Settings,
) -> None:
    source = f"{settings.topic_prefix}delayed"
    await _topics(settings, source, partitions=2)
    handled: list[tuple[str, datetime]] = []

    async def handle(item: dict[str, Any]) -> Sequence[Output]:
        handled.append((item["n"], datetime.now(UTC)))
        return []

    now = datetime.now(UTC)
    later = now + timedelta(seconds=3)
    producer = make_producer(settings)
    await producer.start()
    try:
        for n, due, part in (("late", later, 0), ("after-late", now, 0), ("now", now, 1)):
            body = json.dumps({"n": n, "due": due.isoformat()}).encode()
            await producer.send_and_wait(source, body, partition=part)
    finally:
        await producer.stop()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_delayed(
            settings,
            group=settings.groups.deferred,
            topic=source,
            parse=json.loads,
            due=lambda item: datetime.fromisoformat(item["due"]),
            handle=handle,
            stop=stop,
        )
    )
    try:
        await wait_until(lambda: len(handled) == 3, timeout=60, what="3 records handled")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    order = [n for n, _ in handled]
    assert order[0] == "now"  # the other partition was not held back by the late record
    assert order[1:] == ["late", "after-late"]  # a partition keeps its order
    assert dict(handled)["late"] >= later  # never before it is due


async def test_lag_monitor_counts_what_the_group_has_not_committed(settings: Settings) -> None:
    topics = Topics(settings.topic_prefix)
    await _topics(settings, topics.lane("draft"), partitions=3)
    for i in range(7):
        await produce_raw(settings, topics.lane("draft"), b"x", f"k{i}".encode())
    monitor = LagMonitor(settings, ["draft"], every_s=0.2)
    try:
        assert (await monitor.poll())["draft"] == 7  # nothing committed: all of it
        consumer = make_raw_consumer(
            settings,
            topics.lane("draft"),
            group_id=settings.groups.lane("draft"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            seen = 0
            while seen < 7:
                batch = await consumer.getmany(timeout_ms=500)
                seen += sum(len(r) for r in batch.values())
            await consumer.commit()
        finally:
            await consumer.stop()
        assert (await monitor.poll())["draft"] == 0
        monitor.note("draft")  # this process just sent one: counted until the next poll
        assert monitor.lag("draft") == 1
    finally:
        await monitor.close()


async def test_an_idle_members_producer_asks_the_metadata_of_its_topics_not_the_clusters(
    settings: Settings,
) -> None:
    """A component that has published nothing yet (a quiet lane's worker, a router with no
    requests) refreshes metadata every 30 s; on a shared cluster that must not be every
    topic's (a response as large as the cluster, denials logged under ACLs)."""
    elsewhere = f"{settings.topic_prefix}another-teams-topic"
    await _topics(settings, elsewhere)
    member = Member(settings, client_id="idle", registry=CollectorRegistry(), ready=lambda: True)
    async with member:
        client = member.producer.client
        assert await client.force_metadata_update()  # what the periodic refresh asks
        assert client.cluster.topics() == {member.dlq_topic}
        out = f"{settings.topic_prefix}out"
        await _topics(settings, out)
        await member.producer.send_and_wait(out, b"{}")  # a send adds its topic
        assert await client.force_metadata_update()
        assert client.cluster.topics() == {member.dlq_topic, out}
