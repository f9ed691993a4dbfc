"""Following ``lanes.control`` and reporting on ``lanes.workers``: apply each new revision
of the lane's desired state (versions, canary, cap, steps, pause), take a rolling-restart
turn when every instance before this one is back, and heartbeat this worker's status."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from consumers.lane_worker.tasks import labels_of
from consumers.machinery.loop import Output
from schemas.control import WorkerStatus

__all__ = ["Following"]

log = structlog.get_logger("lanes.worker")


class Following:
    """Part of ``LaneWorker`` (a mixin, one concern of the class); see the module doc."""

    async def _restart(self) -> None:
        """Rolling restart of this instance: it has drained and left the group; reload."""
        self.health = "restarting"
        await self._heartbeat()
        target = self.models.desired.restart_generation
        log.info("worker_restarting", generation=target)
        await self.models.reload()
        self.generation = target
        self.restart.clear()

    async def _control_loop(self) -> None:
        """Apply new revisions of this lane's desired state; take a restart turn when due."""
        while True:
            desired = self.control_view.items.get(self.lane)
            if desired is not None and desired.revision > self.models.applied_revision:
                await self.models.apply(desired)
                self.slot_freed.set()  # a new cap or pause takes effect now
                await self._heartbeat()
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
        for peer in self.workers_view.items.values():
            if (
                peer.lane == self.lane
                and peer.instance < self.instance
                and (now - peer.at).total_seconds() < self.settings.control.worker_stale_s
                and peer.health != "stopped"
                and (peer.restart_generation < target or peer.health != "ready")
            ):
                return False
        return True

    def status(self) -> WorkerStatus:
        m = self.models
        return WorkerStatus(
            instance=self.instance,
            lane=self.lane,
            serves=self.serves,
            health=self.health,
            stable=m.stable,
            canary=m.canary,
            canary_percent=m.canary_percent,
            applied_revision=m.applied_revision,
            restart_generation=self.generation,
            load_errors=m.load_errors,
            engine_states=m.engine_states,
            notices=self.routes.notices(self.lane),
            in_flight=self.in_flight,
            jobs_done=self.jobs_done,
            device=self.settings.worker.device,
        )

    async def _heartbeat(self) -> None:
        self._export_batching()
        await self._send(
            [Output(self.topics.workers, self.instance, self.status().model_dump_json().encode())]
        )

    def _export_batching(self) -> None:
        for engine in self.models.engines.values():
            labels = labels_of(self.lane, engine)
            self.metrics.batch_cap.labels(*labels).set(
                self.models.batch_cap(engine.name, engine.version)
            )
            profile = self.models.batch_profiles.get((engine.name, engine.version))
            for size, seconds in profile.per_image_s.items() if profile else ():
                self.metrics.batch_seconds_per_image.labels(*labels, str(size)).set(seconds)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._heartbeat()
            await asyncio.sleep(self.settings.control.heartbeat_s)
