"""A job held by a lane worker, and the keys and labels derived from it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiokafka import TopicPartition
from opentelemetry import trace

from schemas.events import GenerationRouted
from services.engines.engine import Engine, RenderRequest

__all__ = ["RenderTask", "task_key", "labels_of", "RECENT_LIMIT"]

# Jobs a worker remembers having rendered (redelivery dedupe beside the jobs view).
RECENT_LIMIT = 10_000


@dataclass
class RenderTask:
    tp: TopicPartition
    offset: int
    event: GenerationRouted
    request: RenderRequest
    fetched_at: datetime
    engine: Engine  # chosen at admission: a version switch never splits a job
    # The job's span in this worker (from its record's append to its outcome's ack), under
    # the hop that routed it; a no-op span when tracing is off.
    span: trace.Span = trace.INVALID_SPAN


def task_key(event: GenerationRouted) -> tuple[str, int, bool]:
    return (event.job_id, event.attempt, event.init_artifact_uri is not None)


def labels_of(lane: str, engine: Engine) -> tuple[str, str, str]:
    return (lane, engine.name, engine.version)
