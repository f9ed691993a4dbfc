"""What routing decisions read, followed in the background: each watched lane's lag
(admission, spill), the workers' heartbeats (placement) and each lane's desired state on
``lanes.control`` (the version and steps a routed job is given). Used by the router and
the deferred re-admitter."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from schemas.control import LaneDesired
from services.config.routes import Routes
from services.config.settings import Settings
from services.domain.spill import Placement
from services.kafka.compacted_view import CompactedView
from services.kafka.control_view import ControlView
from services.kafka.lag_monitor import LagMonitor

__all__ = ["LaneWatch"]


@dataclass
class LaneWatch:
    placement: Placement
    control: CompactedView[LaneDesired]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def lags(self) -> LagMonitor:
        return self.placement.lags

    @classmethod
    def start(cls, settings: Settings, routes: Routes) -> LaneWatch:
        lags = LagMonitor(
            settings,
            Placement.watched_lanes(routes),
            settings.admission.poll_s,
            spill=routes.spill_lanes,
        )
        control = ControlView(settings)
        watch = cls(Placement(settings, routes, lags), control)
        watch.tasks = [
            asyncio.create_task(lags.run(), name="lag-monitor"),
            asyncio.create_task(watch.placement.follow(), name="workers-view"),
            asyncio.create_task(control.follow(), name="control-view"),
        ]
        return watch

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
