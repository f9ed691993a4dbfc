"""Following ``lanes.control`` and reporting on ``lanes.workers``: apply each new revision
of the lane's desired state (versions, canary, cap, steps, pause), take a rolling-restart
turn when every instance before this one is back, and heartbeat this worker's status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from consumers.lane_worker.lane import LaneContext
from consumers.lane_worker.models import LaneModels
from consumers.lane_worker.outbox import Outbox
from consumers.lane_worker.slots import Slots
from consumers.machinery.loop import Output
from schemas.control import WorkerHealth, WorkerStatus
from services.kafka.compacted_view import CompactedView

__all__ = ["ControlFollower"]

log = structlog.get_logger("lanes.worker")


@dataclass
class ControlFollower:
    """The worker's health and rolling-restart generation, as the control plane sees it."""

    lane: LaneContext
    models: LaneModels
    workers_view: CompactedView[WorkerStatus]
    slots: Slots
    outbox: Outbox
    health: WorkerHealth = field(default="starting", init=False)
    generation: int = field(default=0, init=False)  # the rolling-restart generation done
    # this instance's turn to restart has come
    restart: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @property
    def ready(self) -> bool:
        return self.health == "ready"

    async def join(self) -> None:
        """Start at the lane's current revision and restart generation."""
        desired = self.lane.control_view.items.get(self.lane.name)
        if desired is not None:
            await self.models.apply(desired)
            self.generation = desired.restart_generation

    async def set_health(self, health: WorkerHealth) -> None:
        self.health = health
        await self.heartbeat()

    async def restart_instance(self) -> None:
        """Rolling restart of this instance: it has drained and left the group; reload."""
        await self.set_health("restarting")
        target = self.models.desired.restart_generation
        log.info("worker_restarting", generation=target)
        await self.models.reload()
        self.generation = target
        self.restart.clear()

    async def run(self) -> None:
        """Apply new revisions of this lane's desired state; take a restart turn when due."""
        while True:
            desired = self.lane.control_view.items.get(self.lane.name)
            if desired is not None and desired.revision > self.models.applied_revision:
                await self.models.apply(desired)
                self.slots.freed.set()  # a new cap or pause takes effect now
                await self.heartbeat()
            if (
                self.models.desired.restart_generation > self.generation
                and self.ready
                and not self.restart.is_set()
                and self._my_restart_turn()
            ):
                self.restart.set()
            await asyncio.sleep(0.1)

    def _my_restart_turn(self) -> bool:
        """Every fresh instance of the lane before this one (by name) is back and ready."""
        target = self.models.desired.restart_generation
        now = datetime.now(UTC)
        stale_s = self.lane.settings.control.worker_stale_s
        for peer in self.workers_view.items.values():
            if (
                peer.lane == self.lane.name
                and peer.instance < self.lane.instance
                and (now - peer.at).total_seconds() < stale_s
                and peer.health != "stopped"
                and (peer.restart_generation < target or peer.health != "ready")
            ):
                return False
        return True

    def status(self) -> WorkerStatus:
        m = self.models
        return WorkerStatus(
            instance=self.lane.instance,
            lane=self.lane.name,
            serves=self.lane.serves,
            health=self.health,
            stable=m.stable,
            canary=m.canary,
            canary_percent=m.canary_percent,
            applied_revision=m.applied_revision,
            restart_generation=self.generation,
            load_errors=m.load_errors,
            engine_states=m.engine_states,
            notices=self.lane.routes.notices(self.lane.name),
            in_flight=self.slots.in_flight,
            jobs_done=self.slots.jobs_done,
            device=self.lane.settings.worker.device,
        )

    async def heartbeat(self) -> None:
        self._export_batching()
        status = self.status().model_dump_json().encode()
        await self.outbox.send([Output(self.lane.topics.workers, self.lane.instance, status)])

    def _export_batching(self) -> None:
        metrics = self.lane.metrics
        for engine in self.models.engines.values():
            labels = self.lane.labels_of(engine)
            metrics.batch_cap.labels(*labels).set(
                self.models.batch_cap(engine.name, engine.version)
            )
            profile = self.models.batch_profiles.get((engine.name, engine.version))
            for size, seconds in profile.per_image_s.items() if profile else ():
                metrics.batch_seconds_per_image.labels(*labels, str(size)).set(seconds)

    async def heartbeats(self) -> None:
        while True:
            await self.heartbeat()
            await asyncio.sleep(self.lane.settings.control.heartbeat_s)
