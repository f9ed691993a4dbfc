"""What the workers of one GPU process share, and who goes first on that GPU."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from consumers.lane_worker.device_turns import DeviceTurns
from consumers.lane_worker.metrics import WorkerMetrics
from consumers.lane_worker.outbox import Outbox
from consumers.lane_worker.recent_jobs import recent_jobs
from consumers.lane_worker.startup import StartupPhases
from schemas.control import WorkerStatus
from schemas.topics import Topics
from services.config.routes import Routes
from services.config.settings import Settings
from services.kafka.compacted_view import CompactedView
from services.kafka.control_view import ControlView
from services.process.tuning import lower_thread_priority
from services.storage.artifacts import open_store

if TYPE_CHECKING:
    from consumers.lane_worker.worker import LaneWorker

__all__ = ["Urgency", "GpuProcess", "Turn"]


class Urgency(IntEnum):
    """A worker's turn on the shared GPU: lower goes first."""

    ASSISTED = 0  # a guest serving the spill queue of a lane this worker assists
    OWN = 1  # the host: the worker's own lane
    BACKFILL = 2  # a guest serving a less urgent lane's spill queue while the GPU would idle


@dataclass
class GpuProcess:
    """One GPU's worker process: its host and guest ``LaneWorker``s (``workers``, host
    first), the GPU's one inference thread and its turns, the image-codec threads, the
    views every worker reads, the metrics, and the outbox (the process's producer)."""

    settings: Settings
    routes: Routes
    registry: CollectorRegistry
    instance: str
    topics: Topics = field(init=False)
    metrics: WorkerMetrics = field(init=False)
    device: DeviceTurns = field(default_factory=DeviceTurns)
    workers: list[LaneWorker] = field(default_factory=list)
    outbox: Outbox = field(default_factory=Outbox)
    startup: StartupPhases | None = None  # set by ``process.run``

    def __post_init__(self) -> None:
        s = self.settings
        self.topics = Topics(s.topic_prefix)
        self.store = open_store(s)
        self.metrics = WorkerMetrics(self.registry)
        self.jobs_view = recent_jobs(s)
        self.control_view = ControlView(s, self.registry)
        self.workers_view = CompactedView(s, self.topics.workers, WorkerStatus.model_validate_json)
        # One inference thread: one GPU runs one batch at a time. It and the image codec
        # threads run nicer than the event loop: bulk CPU work yields to Kafka I/O.
        nicer = (s.worker.compute_thread_nice,)
        self.gpu = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="gpu",
            initializer=lower_thread_priority,
            initargs=nicer,
        )
        self.codec = ThreadPoolExecutor(
            max_workers=2,
            thread_name_prefix="png",
            initializer=lower_thread_priority,
            initargs=nicer,
        )

    @classmethod
    def for_lane(
        cls,
        settings: Settings,
        routes: Routes,
        lane: str,
        registry: CollectorRegistry,
        instance: str | None = None,
    ) -> GpuProcess:
        name = instance or f"{socket.gethostname()}-{os.getpid()}-{lane}"
        return cls(settings, routes, registry, name)


@dataclass(frozen=True)
class Turn:
    """A worker's place on its process's GPU, beside the other workers there."""

    urgency: Urgency
    gpu: GpuProcess

    def _others(self) -> list[LaneWorker]:
        return [w for w in self.gpu.workers if w.turn is not self]

    def yields(self) -> bool:
        """A more urgent worker on this GPU holds jobs: take no new ones (they wait in
        Kafka)."""
        return any(w.slots.in_flight for w in self._others() if w.turn.urgency < self.urgency)

    def may_preempt(self) -> bool:
        """A less urgent worker shares the GPU: this one's batches may run between the
        steps of its render in progress."""
        return any(w.turn.urgency > self.urgency for w in self._others())

    def preemptible(self) -> bool:
        """A more urgent worker shares the GPU: let its batches in between this one's
        steps."""
        return any(w.turn.urgency < self.urgency for w in self._others())

    def wake_others(self) -> None:
        """A slot freed here: a less urgent worker may take jobs again."""
        for w in self._others():
            w.slots.freed.set()
