"""Re-admission [group lanes-deferred]: jobs parked on ``lanes.deferred`` during a burst.

Each job is held until its ``not_before`` (``consumers.machinery.delayed``: paused partitions, no
sleeping). Then, if its lane's lag has fallen to the threshold, it is routed to the lane;
otherwise it is parked again for another ``defer_s``. Nothing is dropped either way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta

import structlog
from prometheus_client import CollectorRegistry, Counter

from consumers.machinery.delayed import run_delayed
from consumers.machinery.loop import Output
from schemas.events import GenerationDeferred, utcnow
from schemas.topics import Topics
from services.config.routes import load_routes
from services.config.settings import Settings
from services.domain.admission import defer_reason
from services.domain.lane_watch import LaneWatch
from services.domain.routing import Job, route

__all__ = ["run"]

log = structlog.get_logger("lanes.deferred")


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    topics = Topics(settings.topic_prefix)
    routes = load_routes(settings.routes_file)
    registry = registry or CollectorRegistry()
    decisions = Counter(
        "lanes_deferred_jobs_total",
        "Deferred jobs when due, by decision",
        ["lane", "decision"],
        registry=registry,
    )
    watch = LaneWatch.start(settings, routes)
    lags = watch.lags

    async def when_due(job: GenerationDeferred) -> Sequence[Output]:
        await lags.measured.wait()
        lane = routes.lanes[job.lane]
        reason = defer_reason(job.lane, lane, job.spec, lags.lag(job.lane))
        if reason is not None and lane.admission is not None:
            again = job.model_copy(
                update={
                    "not_before": utcnow() + timedelta(seconds=lane.admission.defer_s),
                    "deferrals": job.deferrals + 1,
                    "reason": reason,
                    "occurred_at": utcnow(),
                    "event_id": uuid.uuid4(),
                }
            )
            decisions.labels(job.lane, "deferred_again").inc()
            return [Output(topics.deferred, job.job_id, again.to_bytes())]
        decisions.labels(job.lane, "admitted").inc()
        log.info("job_readmitted", job_id=job.job_id, lane=job.lane, deferrals=job.deferrals)
        routed = route(
            routes,
            watch.control.items,
            Job(job.job_id, job.spec, job.requested_at, job.attempt),
            job.lane,
            producer="lanes-deferred",
        )
        topic, _ = watch.placement.topic_for(job.lane)
        return [Output(topic, job.job_id, routed.to_bytes())]

    try:
        await run_delayed(
            settings,
            group=settings.groups.deferred,
            topic=topics.deferred,
            parse=GenerationDeferred.model_validate_json,
            due=lambda j: j.not_before,
            handle=when_due,
            stop=stop,
            registry=registry,
        )
    finally:
        await watch.stop()
