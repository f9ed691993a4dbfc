"""Job state [group lanes-jobs]: folds every job event into ``lanes.jobs`` (compacted).

Partitions are assigned with the range assignor, so one member gets the same partition
number of every input topic: all of one job's events (keyed by job id) meet in one member.
The member's state is an SQLite file under its state directory (``JobIndex``), written
through on every fold; ``lanes.jobs`` is its changelog. On each assignment the member
applies what those partitions of ``lanes.jobs`` gained since its stored offsets (another
member's writes, or its own unacknowledged ones), so a restart or a rebalance continues
from the last published state without re-reading history. The fold ignores a redelivered
event, so a row ahead of its changelog is harmless.

The same process deletes finished jobs past retention (``consumers.retention``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from consumers.machinery.loop import MessageContext, Output
from consumers.machinery.restoring import RestoringListener
from consumers.machinery.runtime import run_consumer, stop_on_signals
from consumers.retention import RetentionSweeper
from producers.tracing import trace_id_of
from schemas.events import parse_job_event
from schemas.exceptions import PoisonEvent
from schemas.topics import Topics
from services.config.routes import load_routes
from services.config.settings import Settings
from services.domain.job_fold import fold
from services.domain.job_index import JobIndex
from services.kafka.clients import make_producer
from services.storage.artifacts import open_store

__all__ = ["run", "JobStateFolder"]

log = structlog.get_logger("lanes.jobs")


class JobStateFolder(RestoringListener):
    def __init__(self, settings: Settings, topics: Topics) -> None:
        super().__init__()
        self.topics = topics
        self.index = JobIndex(settings, topics.jobs, settings.view_path("jobs-state"))

    async def restore(self, partitions: list[int]) -> None:
        applied = await self.index.view.catch_up(partitions)
        log.info("job_state_restored", partitions=partitions, changelog_records=applied)

    async def handle(self, event: object, ctx: MessageContext) -> Sequence[Output]:
        await self.restored()
        job_id = getattr(event, "job_id", None)
        if not job_id:
            raise PoisonEvent(f"a job event without a job id: {type(event).__name__}")
        new = fold(self.index.get(job_id), event)
        if new is None:
            return []
        if new.trace_id is None:  # this hop's span is in the job's trace
            trace_id = trace_id_of(trace.get_current_span())
            if trace_id is not None:
                new = new.model_copy(update={"trace_id": trace_id})
        self.index.put(new)
        if new.terminal:
            log.info("job_finished", status=new.status, error=new.error)
        return [Output(self.topics.jobs, job_id, new.model_dump_json().encode())]


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    registry = registry or CollectorRegistry()
    topics = Topics(settings.topic_prefix)
    routes = load_routes(settings.routes_file)
    inputs = [topics.requests, topics.deferred, topics.renders, topics.verifications]
    inputs += [topics.lane(name) for name in sorted(routes.lanes)]
    inputs += [topics.spill(name) for name in routes.spill_lanes]
    folder = JobStateFolder(settings, topics)
    stop = stop_on_signals(stop)
    producer = make_producer(settings, client_id="lanes-jobs-retention", topics=[topics.jobs])
    sweeper = RetentionSweeper(settings, folder.index, open_store(settings), producer, registry)
    await producer.start()
    sweeping = asyncio.create_task(sweeper.run(stop), name="retention")
    try:
        await run_consumer(
            settings,
            group=settings.groups.jobs,
            topics=inputs,
            parse=parse_job_event,
            handler=folder.handle,
            stop=stop,
            registry=registry,
            listener=folder,
            max_records=64,
            consumer_options={"partition_assignment_strategy": (RangePartitionAssignor,)},
        )
    finally:
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)
        await producer.stop()
        folder.index.view.close()
