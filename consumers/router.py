"""Router [group lanes-router]: lanes.requests -> lanes.lane.<lane>, by intent, with
admission: during a burst (the lane's lag above its ``admission.defer_lag``) a job of a
deferrable priority is parked on ``lanes.deferred`` instead (``consumers.deferred``
re-admits it). Critical jobs are never deferred. A lane with a spill policy overflows into
its spill queue, which workers of other lanes serve first (``services.domain.spill``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from consumers.machinery.loop import MessageContext, Output
from consumers.machinery.runtime import run_consumer
from schemas.events import (
    CancelRequested,
    GenerationDeferred,
    GenerationRequested,
    parse_job_event,
    utcnow,
)
from schemas.exceptions import PoisonEvent
from schemas.topics import Topics
from services.config.routes import Routes, load_routes
from services.config.settings import Settings
from services.domain.admission import defer_reason
from services.domain.lane_watch import LaneWatch
from services.domain.routing import Job, route

__all__ = ["run", "Router"]

log = structlog.get_logger("lanes.router")


class Router:
    def __init__(
        self, routes: Routes, topics: Topics, watch: LaneWatch, registry: CollectorRegistry
    ) -> None:
        self.routes = routes
        self.topics = topics
        self.watch = watch
        self.placement = watch.placement
        self.lags = watch.lags
        self.routed = Counter(
            "lanes_router_jobs_total",
            "Jobs by admission decision",
            ["lane", "decision"],
            registry=registry,
        )
        self.lag = Gauge(
            "lanes_admission_lane_lag",
            "The lane's lag as admission last saw it",
            ["lane"],
            registry=registry,
        )

    async def handle(self, event: object, ctx: MessageContext) -> Sequence[Output]:
        if isinstance(event, CancelRequested):
            return []  # job state applies it; workers skip or stop the job
        if not isinstance(event, GenerationRequested):
            raise PoisonEvent(
                f"router expects generation.requested, got {getattr(event, 'type', '?')}"
            )
        lane_name, lane = self.routes.lane_of(event.spec)
        lag = self.lags.lag(lane_name)
        self.lag.labels(lane_name).set(lag)
        reason = defer_reason(lane_name, lane, event.spec, lag)
        if reason is not None:
            assert lane.admission is not None
            deferred = GenerationDeferred(
                job_id=event.job_id,
                producer="lanes-router",
                spec=event.spec,
                lane=lane_name,
                attempt=event.attempt,
                requested_at=event.occurred_at,
                reason=reason,
                not_before=utcnow() + timedelta(seconds=lane.admission.defer_s),
            )
            self.routed.labels(lane_name, "deferred").inc()
            log.info("job_deferred", reason=reason, not_before=deferred.not_before.isoformat())
            return [Output(self.topics.deferred, event.job_id, deferred.to_bytes())]
        topic, spilled = self.placement.topic_for(lane_name)
        self.routed.labels(lane_name, "spilled" if spilled else "routed").inc()
        job = Job(event.job_id, event.spec, event.occurred_at, event.attempt)
        routed = route(
            self.routes, self.watch.control.items, job, lane_name, producer="lanes-router"
        )
        return [Output(topic, event.job_id, routed.to_bytes())]


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    topics = Topics(settings.topic_prefix)
    routes = load_routes(settings.routes_file)
    registry = registry or CollectorRegistry()
    watch = LaneWatch.start(settings, routes)
    router = Router(routes, topics, watch, registry)
    try:
        await run_consumer(
            settings,
            group=settings.groups.router,
            topics=[topics.requests],
            parse=parse_job_event,
            handler=router.handle,
            stop=stop,
            registry=registry,
        )
    finally:
        await watch.stop()
