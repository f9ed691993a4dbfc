"""A job held by a lane worker, and the key it is deduplicated by."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiokafka import TopicPartition
from opentelemetry import trace

from schemas.events import GenerationRouted
from services.engines.engine import Engine, RenderRequest

__all__ = ["RenderTask", "task_key", "BatchKey"]

# (model, version, the request's shape): jobs with the same key can share a pipeline call,
# and each version's batches stop at its own cap.
BatchKey = tuple[str, str, tuple[int, int, int, float, float | None, bool]]


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
    """(job id, attempt, refine pass): what one render of a job is."""
    return (event.job_id, event.attempt, event.init_artifact_uri is not None)
