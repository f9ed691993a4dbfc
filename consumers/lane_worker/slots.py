"""The jobs one lane worker holds: how many (its slots, against the lane's cap), which
(job, attempt, pass) keys are held now or were rendered recently (redelivery dedupe), and
the event that wakes the fetch loop when a slot frees."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from consumers.lane_worker.metrics import WorkerMetrics

__all__ = ["Slots", "TaskKey", "RECENT_LIMIT"]

# Jobs a worker remembers having rendered (redelivery dedupe beside the jobs view).
RECENT_LIMIT = 10_000
TaskKey = tuple[str, int, bool]  # (job id, attempt, refine pass)


class Slots:
    def __init__(
        self,
        metrics: WorkerMetrics,
        labels: Callable[[], tuple[str, str, str]],
        on_free: Callable[[], None] = lambda: None,
    ) -> None:
        self.metrics = metrics
        self.labels = labels  # the worker's labels (its lane's stable version, which changes)
        self.on_free = on_free  # a freed slot may let less urgent peers take jobs again
        self.in_flight = 0
        self.max_in_flight = 0
        self.jobs_done = 0
        self.freed = asyncio.Event()
        self.holding: set[TaskKey] = set()
        self.recent: OrderedDict[TaskKey, None] = OrderedDict()

    def seen(self, key: TaskKey) -> bool:
        """Held now, or rendered here recently."""
        return key in self.holding or key in self.recent

    def hold(self, key: TaskKey) -> None:
        self.holding.add(key)
        self._count(+1)

    def release(self, key: TaskKey, rendered: bool = False) -> None:
        """The job's outcome is published (``rendered``: an image of it is stored)."""
        self.holding.discard(key)
        self.jobs_done += 1
        if rendered:
            self.recent[key] = None
            while len(self.recent) > RECENT_LIMIT:
                self.recent.popitem(last=False)
        self._count(-1)

    def drop(self, key: TaskKey) -> None:
        """Let go of a job with no outcome: uncommitted, so it is redelivered."""
        self.holding.discard(key)
        self._count(-1)

    def _count(self, delta: int) -> None:
        self.in_flight += delta
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        labels = self.labels()
        self.metrics.in_flight.labels(*labels).set(self.in_flight)
        self.metrics.in_flight_max.labels(*labels).set(self.max_in_flight)
        if delta < 0:
            self.freed.set()
            self.on_free()
