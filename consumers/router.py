"""Router [group lanes-router]: lanes.requests -> lanes.lane.<lane>, by intent."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Sequence

from consumers.exceptions import PoisonEvent
from consumers.loop import MessageContext, Output
from consumers.runtime import run_consumer
from schemas.events import CancelRequested, GenerationRequested, GenerationRouted, parse_job_event
from schemas.topics import Topics
from services.routes import Routes, load_routes
from services.settings import Settings

__all__ = ["run", "Router", "seed_for"]


def seed_for(job_id: str) -> int:
    """A stable seed per job, so a re-render of the same job draws the same image."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")


class Router:
    def __init__(self, routes: Routes, topics: Topics) -> None:
        self.routes = routes
        self.topics = topics

    async def handle(self, event: object, ctx: MessageContext) -> Sequence[Output]:
        if isinstance(event, CancelRequested):
            return []  # job state applies it; workers skip or stop the job
        if not isinstance(event, GenerationRequested):
            raise PoisonEvent(f"router expects generation.requested, got {getattr(event, 'type', '?')}")
        spec = event.spec
        lane_name, lane = self.routes.lane_for(spec.intent)
        model = self.routes.models[lane.model]
        routed = GenerationRouted(
            job_id=event.job_id,
            producer="lanes-router",
            spec=spec,
            attempt=event.attempt,
            lane=lane_name,
            model=lane.model,
            version=model.version,
            sample_steps=lane.sample_steps,
            guidance_scale=lane.guidance_scale,
            width=spec.width or lane.width,
            height=spec.height or lane.height,
            seed=spec.seed if spec.seed is not None else seed_for(event.job_id),
            requested_at=event.occurred_at,
        )
        return [Output(self.topics.lane(lane_name), event.job_id, routed.to_bytes())]


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    topics = Topics(settings.topic_prefix)
    router = Router(load_routes(settings.routes_file), topics)
    await run_consumer(
        settings, name="router", topics=[topics.requests], parse=parse_job_event,
        handler=router.handle, stop=stop,
    )
