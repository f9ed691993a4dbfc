"""Router [group lanes-router]: lanes.requests -> lanes.lane.<lane>, by intent, with
admission: during a burst (the lane's lag above its ``admission.defer_lag``) a job of a
deferrable priority is parked on ``lanes.deferred`` instead (``consumers.deferred``
re-admits it). Critical jobs are never deferred. A lane with a spill policy overflows into
its spill queue, which workers of other lanes serve first (``services.domain.spill``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from consumers.machinery.loop import MessageContext, Output
from consumers.machinery.runtime import run_consumer
from schemas.events import (
    CancelRequested,
    GenerationDeferred,
    GenerationRequested,
    GenerationRouted,
    parse_job_event,
    utcnow,
)
from schemas.exceptions import PoisonEvent
from schemas.spec import GenerationSpec
from schemas.topics import Topics
from services.config.routes import LaneSpec, Routes, load_routes
from services.config.settings import Settings
from services.domain.spill import Placement
from services.kafka.lag_monitor import LagMonitor

__all__ = ["run", "Router", "seed_for", "routed_event", "defer_reason", "watch", "stop_watching"]

log = structlog.get_logger("lanes.router")


def seed_for(job_id: str) -> int:
    """A stable seed per job, so a re-render of the same job draws the same image."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")


def routed_event(
    routes: Routes,
    job_id: str,
    spec: GenerationSpec,
    attempt: int,
    requested_at: datetime,
    producer: str,
) -> GenerationRouted:
    lane_name, lane = routes.lane_for(spec.intent)
    return GenerationRouted(
        job_id=job_id,
        producer=producer,
        spec=spec,
        attempt=attempt,
        lane=lane_name,
        model=lane.model,
        version=routes.models[lane.model].version,
        sample_steps=lane.sample_steps,
        guidance_scale=lane.guidance_scale,
        width=spec.width or lane.width,
        height=spec.height or lane.height,
        seed=spec.seed if spec.seed is not None else seed_for(job_id),
        requested_at=requested_at,
    )


def defer_reason(lane_name: str, lane: LaneSpec, spec: GenerationSpec, lag: int) -> str | None:
    """Why this job waits, or None when it may go to its lane now."""
    policy = lane.admission
    if policy is None or spec.priority not in policy.defer_priorities or lag <= policy.defer_lag:
        return None
    return f"lane {lane_name} is busy: {lag} jobs waiting (threshold {policy.defer_lag})"


class Router:
    def __init__(
        self, routes: Routes, topics: Topics, placement: Placement, registry: CollectorRegistry
    ) -> None:
        self.routes = routes
        self.topics = topics
        self.placement = placement
        self.lags = placement.lags
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
        lane_name, lane = self.routes.lane_for(event.spec.intent)
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
        routed = routed_event(
            self.routes, event.job_id, event.spec, event.attempt, event.occurred_at, "lanes-router"
        )
        return [Output(topic, event.job_id, routed.to_bytes())]


def watch(settings: Settings, routes: Routes) -> tuple[Placement, list[asyncio.Task[None]]]:
    """Lag and worker heartbeats for admission and placement, followed in the background."""
    lags = LagMonitor(
        settings,
        Placement.watched_lanes(routes),
        settings.admission_poll_s,
        spill=routes.spill_lanes,
    )
    placement = Placement(settings, routes, lags)
    return placement, [
        asyncio.create_task(lags.run(), name="lag-monitor"),
        asyncio.create_task(placement.follow(), name="workers-view"),
    ]


async def stop_watching(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    topics = Topics(settings.topic_prefix)
    routes = load_routes(settings.routes_file)
    registry = registry or CollectorRegistry()
    placement, watchers = watch(settings, routes)
    router = Router(routes, topics, placement, registry)
    try:
        await run_consumer(
            settings,
            name="router",
            topics=[topics.requests],
            parse=parse_job_event,
            handler=router.handle,
            stop=stop,
            registry=registry,
        )
    finally:
        await stop_watching(watchers)
