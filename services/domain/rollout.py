"""Rollout state as operators read it: each lane's desired state (``lanes.control``) next to
what every worker instance reports (``lanes.workers``). Serves `lanes ops status` and the
gateway's read-only admin endpoints."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from pydantic import BaseModel

from schemas.control import LaneDesired, WorkerStatus
from schemas.topics import Topics
from services.config.routes import Routes
from services.config.settings import Settings
from services.domain.control_state import initial_state
from services.kafka.compacted_view import CompactedView
from services.kafka.control_view import ControlView

__all__ = ["InstanceRollout", "LaneRollout", "RolloutView"]


class InstanceRollout(BaseModel):
    status: WorkerStatus
    live: bool  # heard from within worker_stale_s
    current: bool  # serves the lane's current revision


class LaneRollout(BaseModel):
    lane: str
    desired: LaneDesired
    instances: list[InstanceRollout]

    @property
    def converged(self) -> bool:
        live = [i for i in self.instances if i.live]
        return bool(live) and all(i.current and i.status.health == "ready" for i in live)


class RolloutView:
    def __init__(self, settings: Settings, routes: Routes) -> None:
        topics = Topics(settings.topic_prefix)
        self.settings = settings
        self.routes = routes
        self.control = ControlView(settings)
        self.workers: CompactedView[WorkerStatus] = CompactedView(
            settings, topics.workers, WorkerStatus.model_validate_json
        )

    async def load(self) -> None:
        await asyncio.gather(self.control.load(), self.workers.load())

    async def follow(self) -> None:
        await asyncio.gather(self.control.follow(), self.workers.follow())

    def lanes(self) -> list[LaneRollout]:
        now = datetime.now(UTC)
        out = []
        for lane in sorted(self.routes.lanes):
            desired = self.control.items.get(lane) or initial_state(self.routes, lane)
            instances = [
                InstanceRollout(
                    status=s,
                    live=s.health != "stopped"
                    and (now - s.at).total_seconds() < self.settings.control.worker_stale_s,
                    current=s.applied_revision == desired.revision,
                )
                for s in sorted(self.workers.items.values(), key=lambda s: s.instance)
                if s.lane == lane
            ]
            out.append(LaneRollout(lane=lane, desired=desired, instances=instances))
        return out
