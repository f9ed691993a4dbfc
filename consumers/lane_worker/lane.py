"""What every part of one lane worker reads and never changes: the lane, its queue and
group, the topics, the views of ``lanes.jobs`` and ``lanes.control``, and the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from consumers.lane_worker.metrics import WorkerMetrics
from consumers.lane_worker.recent_jobs import JobDigest
from schemas.events import GenerationRouted
from schemas.topics import Topics
from services.config.routes import LaneSpec, Routes
from services.config.settings import Settings
from services.engines.engine import Engine
from services.kafka.control_view import ControlView
from services.kafka.recent_view import RecentView

__all__ = ["LaneContext", "Stage"]

Stage = Literal["draft", "final", "upscaled"]


@dataclass(frozen=True)
class LaneContext:
    settings: Settings
    routes: Routes
    name: str  # the lane
    topics: Topics
    instance: str  # this worker's name on lanes.workers
    serves: Literal["lane", "spill"]  # its lane's own queue, or the lane's spill queue
    group: str
    source: str  # the topic it consumes
    metrics: WorkerMetrics
    jobs_view: RecentView[JobDigest]
    control_view: ControlView

    @property
    def spec(self) -> LaneSpec:
        return self.routes.lanes[self.name]

    @property
    def producer(self) -> str:
        return f"lanes-worker-{self.name}"

    def labels_of(self, engine: Engine) -> tuple[str, str, str]:
        return (self.name, engine.name, engine.version)

    def stage_of(self, event: GenerationRouted) -> Stage:
        """A refine pass makes the upscaled image; the first render of a cascade is a draft."""
        if event.init_artifact_uri is not None:
            return "upscaled"
        if self.spec.cascade is not None or event.spec.intent != "final":
            return "draft"
        return "final"

    def canceled(self, job_id: str) -> bool:
        """A cancel was asked for the job (or it ended canceled)."""
        job = self.jobs_view.get(job_id)
        return job is not None and job.canceling
