"""What runs next on the worker's device: batches from the micro-batcher, each taking its
turn on the GPU the process's workers share (the more urgent first, between the steps of a
less urgent render in progress), then finishing on a task of its own while the next batch
renders. A hosted engine's batch takes no turn: its calls run concurrently, up to the cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumers.lane_worker.batcher import MicroBatcher
from consumers.lane_worker.device_turns import DeviceTurns
from consumers.lane_worker.gpu_process import Turn
from consumers.lane_worker.outcomes import Outcomes
from consumers.lane_worker.rendering import Renderer, child_span
from consumers.lane_worker.slots import Slots
from consumers.lane_worker.tasks import BatchKey, RenderTask, task_key

__all__ = ["Scheduler"]


@dataclass
class Scheduler:
    batcher: MicroBatcher[BatchKey, RenderTask]
    device: DeviceTurns
    turn: Turn
    renderer: Renderer
    outcomes: Outcomes
    slots: Slots
    # outcomes being published and provider calls in flight
    finishing: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    async def run(self) -> None:
        while True:
            batch = await self.batcher.next_batch()
            if not batch[0].engine.on_device:  # an HTTP call: no GPU turn, many in flight
                self._spawn(self._call_provider(batch), name="provider-call")
                continue
            waiting = time.time_ns()
            async with self.device.turn(self.turn.urgency):  # the GPU is shared with guests
                for task in batch:  # the wait for this worker's turn on the device
                    child_span(task, "gpu turn wait", waiting).end()
                started_at = datetime.now(UTC)
                # Progress events are not waited for here (the render starts at once);
                # the outcome awaits their acks before it is published.
                started = await self.renderer.announce(batch)
                results = await self.renderer.render(batch)
            self._spawn(self.outcomes.finish(results, started_at, started), name="finish")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)

    async def _call_provider(self, batch: list[RenderTask]) -> None:
        """A hosted engine's batch (one job): the call (waiting out any throttle), then its
        outcome, on a task of its own, so one worker has up to its cap calls in flight."""
        started_at = datetime.now(UTC)
        try:
            started = await self.renderer.announce(batch)
            results = await self.renderer.render(batch)
        except asyncio.CancelledError:  # a drain's deadline passed while it waited out a
            for t in batch:  # throttle: uncommitted (redelivered), no longer held here
                self.slots.drop(task_key(t.event))
            raise
        await self.outcomes.finish(results, started_at, started)

    async def settle(self, deadline: float) -> None:
        """A drain: let outcomes being published finish by ``deadline``; provider calls
        still waiting out a throttle are abandoned (uncommitted, so redelivered)."""
        if self.finishing:
            await asyncio.wait(self.finishing, timeout=max(0.1, deadline - time.monotonic()))
        for task in list(self.finishing):
            if task.get_name() == "provider-call":
                task.cancel()
