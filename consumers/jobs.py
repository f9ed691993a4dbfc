"""Job state [group lanes-jobs]: folds every job event into ``lanes.jobs`` (compacted).

Partitions are assigned with the range assignor, so one member gets the same partition
number of every input topic: all of one job's events (keyed by job id) meet in one member.
On each assignment the member reloads those partitions of ``lanes.jobs``, so a restart or a
rebalance continues from the last published state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from prometheus_client import CollectorRegistry

from consumers.machinery.loop import MessageContext, Output
from consumers.machinery.restoring import RestoringListener
from consumers.machinery.runtime import run_consumer
from schemas.events import parse_job_event
from schemas.exceptions import PoisonEvent
from schemas.records import JobState
from schemas.topics import Topics
from services.config.routes import load_routes
from services.config.settings import Settings
from services.domain.job_fold import fold
from services.kafka.compacted_view import CompactedView

__all__ = ["run", "JobStateFolder"]

log = structlog.get_logger("lanes.jobs")


class JobStateFolder(RestoringListener):
    def __init__(self, settings: Settings, topics: Topics) -> None:
        super().__init__()
        self.topics = topics
        self.view: CompactedView[JobState] = CompactedView(
            settings, topics.jobs, JobState.model_validate_json
        )

    async def restore(self, partitions: list[int]) -> None:
        await self.view.load(partitions)
        log.info("job_state_restored", partitions=partitions, jobs=len(self.view.items))

    async def handle(self, event: object, ctx: MessageContext) -> Sequence[Output]:
        await self.restored()
        job_id = getattr(event, "job_id", None)
        if not job_id:
            raise PoisonEvent(f"a job event without a job id: {type(event).__name__}")
        new = fold(self.view.items.get(job_id), event)
        if new is None:
            return []
        self.view.items[job_id] = new
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
