"""Where the router sends a job: its lane's queue, or, during a burst, the lane's spill queue.

A lane with a ``spill`` policy overflows into ``lanes.lane.<lane>.spill`` while more than
``after_lag`` of its jobs wait and the spill queue is the shorter wait: jobs waiting per
server, counting the lane's own live workers for its queue and the live guests (in the
workers of the lanes that ``assists`` or ``backfills`` it) for the spill queue. With no live
guest nothing spills, so a spilled job always has a worker that serves it.

When the two waits are equal, the queue whose newest job was placed first drains first (the
jobs ahead in both are of the same lane, and so take about as long): the job goes there,
unless a guest that only backfills has jobs of its own waiting beyond one in flight per
worker of its lane (it renders those first).
Without this a final arriving while the final worker and the draft worker each rendered one
stayed in its lane, and the draft worker, done first, idled for seconds beside it.
"""

from __future__ import annotations

import time

import structlog

from schemas.control import WorkerStatus, live_workers
from schemas.topics import Topics
from services.config.routes import Routes, SpillSpec
from services.config.settings import Settings
from services.kafka.compacted_view import CompactedView
from services.kafka.lag_monitor import LagMonitor, spill_key

__all__ = ["Placement", "should_spill"]

log = structlog.get_logger("lanes.spill")


def should_spill(
    policy: SpillSpec | None,
    lag: int,
    spill_lag: int,
    lane_workers: int,
    guests: int,
    *,
    spill_drains_first: bool = False,
) -> bool:
    """Spill past the policy's threshold when a live guest makes the spill queue the shorter
    wait per server, or as short and ``spill_drains_first``."""
    if policy is None or guests == 0 or lag <= policy.after_lag:
        return False
    spill_wait, lane_wait = spill_lag / guests, lag / max(1, lane_workers)
    return spill_wait < lane_wait or (spill_wait == lane_wait and spill_drains_first)


class Placement:
    """The lane or spill topic for a job of a lane, from lag (``LagMonitor``, which also
    counts what this process sent since its last poll) and the workers' heartbeats."""

    def __init__(self, settings: Settings, routes: Routes, lags: LagMonitor) -> None:
        self.settings = settings
        self.routes = routes
        self.topics = Topics(settings.topic_prefix)
        self.lags = lags
        self.placed_at: dict[str, float] = {}  # key (lane, spill_key) -> its newest job
        self.workers: CompactedView[WorkerStatus] = CompactedView(
            settings, self.topics.workers, WorkerStatus.model_validate_json
        )

    @staticmethod
    def watched_lanes(routes: Routes) -> list[str]:
        """Lanes whose lag placement or admission needs: those with admission or a spill
        queue, and those that backfill a spill queue (their own jobs come first)."""
        return sorted(
            {
                n
                for n, lane in routes.lanes.items()
                if lane.admission or lane.spill or lane.backfills
            }
        )

    def _spill_drains_first(
        self, lane_name: str, statuses: list[WorkerStatus], stale_s: float
    ) -> bool:
        """The spill queue's newest job was placed before the lane's own newest, and no lane
        that only backfills it has jobs waiting beyond one in flight per live worker (its
        lag, as last polled, still counts a job finished since: up to a second old)."""
        spill_at = self.placed_at.get(spill_key(lane_name), 0.0)
        if spill_at >= self.placed_at.get(lane_name, 0.0):
            return False
        return all(
            self.lags.lag(n) <= len(live_workers(statuses, n, stale_s, "lane"))
            for n, lane in self.routes.lanes.items()
            if lane_name in lane.backfills
        )

    async def follow(self) -> None:
        if self.routes.spill_lanes:
            await self.workers.follow()

    def topic_for(self, lane_name: str) -> tuple[str, bool]:
        """(topic, spilled) for the next job of ``lane_name``; the lag count includes it."""
        lane = self.routes.lanes[lane_name]
        spilled = False
        if lane.spill is not None:
            stale = self.settings.control.worker_stale_s
            statuses = [w for w in self.workers.items.values() if w.health == "ready"]
            spilled = should_spill(
                lane.spill,
                self.lags.lag(lane_name),
                self.lags.spill_lag(lane_name),
                len(live_workers(statuses, lane_name, stale, "lane")),
                len(live_workers(statuses, lane_name, stale, "spill")),
                spill_drains_first=self._spill_drains_first(lane_name, statuses, stale),
            )
        key = spill_key(lane_name) if spilled else lane_name
        self.lags.note(key)
        self.placed_at[key] = time.monotonic()
        if spilled:
            return self.topics.spill(lane_name), True
        return self.topics.lane(lane_name), False
