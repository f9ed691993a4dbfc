"""Where the router sends a job: its lane's queue, or, during a burst, the lane's spill queue.

A lane with a ``spill`` policy overflows into ``lanes.lane.<lane>.spill`` while more than
``after_lag`` of its jobs wait and the spill queue is the shorter wait: jobs waiting per
server, counting the lane's own live workers for its queue and the live guests (in the
workers of the lanes that ``assists`` or ``backfills`` it) for the spill queue. With no live
guest nothing spills, so a spilled job always has a worker that serves it.
"""

from __future__ import annotations

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
    policy: SpillSpec | None, lag: int, spill_lag: int, lane_workers: int, guests: int
) -> bool:
    if policy is None or guests == 0 or lag <= policy.after_lag:
        return False
    return spill_lag / guests < lag / max(1, lane_workers)


class Placement:
    """The lane or spill topic for a job of a lane, from lag (``LagMonitor``, which also
    counts what this process sent since its last poll) and the workers' heartbeats."""

    def __init__(self, settings: Settings, routes: Routes, lags: LagMonitor) -> None:
        self.settings = settings
        self.routes = routes
        self.topics = Topics(settings.topic_prefix)
        self.lags = lags
        self.workers: CompactedView[WorkerStatus] = CompactedView(
            settings, self.topics.workers, WorkerStatus.model_validate_json
        )

    @staticmethod
    def watched_lanes(routes: Routes) -> list[str]:
        """Lanes whose lag placement or admission needs."""
        return sorted({n for n, lane in routes.lanes.items() if lane.admission or lane.spill})

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
            )
        if spilled:
            self.lags.note(spill_key(lane_name))
            return self.topics.spill(lane_name), True
        self.lags.note(lane_name)
        return self.topics.lane(lane_name), False
