"""What `lanes ops` does: publish a signed command and wait for the control plane's answer."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from producers.kafka import make_raw_consumer
from producers.ops import publish_command
from schemas.control import LaneDesired, OpsCommand, OpsResult
from schemas.topics import Topics
from services.config.settings import Settings
from services.kafka.clients import partition_ids
from services.kafka.control_view import ControlView

__all__ = ["send_and_wait", "lane_states"]


async def send_and_wait(
    settings: Settings, command: OpsCommand, timeout_s: float = 30
) -> OpsResult:
    topics = Topics(settings.topic_prefix)
    consumer = make_raw_consumer(settings, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topics.ops_results, p)
            for p in await partition_ids(settings, topics.ops_results)
        ]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # pin the end before the command goes out
        await publish_command(settings, command, settings.control.ops_key.get_secret_value())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    if r.key and r.key.decode() == command.command_id:
                        return OpsResult.model_validate_json(r.value)
        raise TimeoutError(f"no answer from the control plane in {timeout_s}s (is it running?)")
    finally:
        await consumer.stop()


async def lane_states(settings: Settings) -> dict[str, LaneDesired]:
    return await ControlView(settings).load()
