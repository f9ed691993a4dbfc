"""Fold job events into a job's state.

The fold does not depend on arrival order across topics (a restarted job-state consumer
may read lanes.renders ahead of lanes.requests): each event records a fact, and the status
is derived from the facts. A terminal status, once reached, never changes, and an event
already folded (same event id) changes nothing.
"""

from __future__ import annotations

from typing import Any

from schemas.events import (
    GenerationRequested,
    GenerationRouted,
    RenderCompleted,
    RenderFailed,
    RenderRerouted,
    RenderStarted,
    VerificationCompleted,
    utcnow,
)
from schemas.records import Artifact, JobState, JobStatus, Verification

__all__ = ["fold", "derive_status"]

SEEN_LIMIT = 128


def derive_status(state: JobState) -> JobStatus:
    if state.terminal:
        return state.status
    if state.error is not None:
        return "failed"
    if state.artifacts:
        needs_check = state.expected_text is not None
        if not needs_check or state.verification is not None:
            return "succeeded" if state.spec is not None else "verifying"
        return "verifying"
    if state.started:
        return "running"
    if state.lane is not None:
        return "routed"
    return "queued"


def fold(state: JobState | None, event: Any) -> JobState | None:
    """The new state, or None when the event changes nothing (duplicate or post-terminal)."""
    job_id = event.job_id
    if state is None:
        state = JobState(job_id=job_id)
    event_id = str(event.event_id)
    if event_id in state.seen_events or state.terminal:
        return None
    update: dict[str, Any] = {}
    attempt = getattr(event, "attempt", state.attempt)
    if isinstance(event, (RenderStarted, RenderCompleted, RenderFailed)) and attempt < state.attempt:
        return None  # a superseded attempt (the job was rerouted) changes nothing
    if isinstance(event, (GenerationRequested, GenerationRouted)):
        if state.spec is None:
            update.update(spec=event.spec, expected_text=event.spec.expected_text)
        if isinstance(event, GenerationRequested):
            update.update(created_at=event.occurred_at, fingerprint=event.fingerprint)
        elif event.attempt >= state.attempt:
            update.update(lane=event.lane, model=event.model, version=event.version,
                          attempt=event.attempt)
            if event.attempt > state.attempt:
                update["started"] = False
        if state.created_at is None:
            update["created_at"] = (
                event.occurred_at if isinstance(event, GenerationRequested) else event.requested_at
            )
    elif isinstance(event, RenderStarted):
        update.update(started=True, lane=event.lane, model=event.model, version=event.version)
    elif isinstance(event, RenderCompleted):
        artifact = Artifact(stage=event.stage, attempt=event.attempt, uri=event.artifact_uri,
                            width=event.width, height=event.height, model=event.model,
                            version=event.version)
        if artifact not in state.artifacts:
            update["artifacts"] = [*state.artifacts, artifact]
        update.update(started=True, lane=event.lane, model=event.model, version=event.version,
                      timings=event.timings)
        if state.expected_text is None and event.expected_text:
            update["expected_text"] = event.expected_text
    elif isinstance(event, RenderFailed):
        update["error"] = event.error
    elif isinstance(event, RenderRerouted):
        update["reroutes"] = [*state.reroutes, f"{event.lane} -> {event.to_lane}: {event.reason}"]
        if event.attempt > state.attempt:
            update.update(attempt=event.attempt, lane=event.to_lane, started=False)
    elif isinstance(event, VerificationCompleted):
        update["verification"] = Verification(
            expected=event.expected, read=event.read, score=event.score, passed=event.passed,
            threshold=event.threshold, artifact_uri=event.artifact_uri, error=event.error,
        )
    else:
        return None
    update["seen_events"] = [*state.seen_events[-(SEEN_LIMIT - 1):], event_id]
    now = utcnow()
    update["updated_at"] = now
    new = state.model_copy(update=update)
    status = derive_status(new)
    finished = now if status in ("succeeded", "failed", "canceled") else None
    return new.model_copy(update={"status": status, "finished_at": finished})
