"""Fold job events into a job's state.

The fold does not depend on arrival order across topics (a restarted job-state consumer
may read lanes.renders ahead of lanes.requests): each event records a fact, and the status
is derived from the facts. A terminal status, once reached, never changes, and an event
already folded (same event id) changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from functools import singledispatch
from typing import Any

from schemas.events import (
    CancelRequested,
    GenerationDeferred,
    GenerationRequested,
    GenerationRouted,
    RenderCanceled,
    RenderCompleted,
    RenderFailed,
    RenderProgress,
    RenderRerouted,
    RenderStarted,
    VerificationCompleted,
    utcnow,
)
from schemas.records import Artifact, JobState, JobStatus, Progress, Verification

__all__ = ["fold", "derive_status"]

SEEN_LIMIT = 128


def _current(state: JobState) -> list[Artifact]:
    return [a for a in state.artifacts if a.attempt == state.attempt]


def _concluded(state: JobState) -> bool:
    """Typography checking is over: a verification of this attempt that sent it nowhere."""
    return any(v.attempt == state.attempt and v.rerouted_to is None for v in state.verifications)


def derive_status(state: JobState) -> JobStatus:
    if state.terminal:
        return state.status
    if state.error is not None:
        return "failed"
    current = _current(state)
    if any(a.deliverable for a in current):
        if state.expected_text is not None and not _concluded(state):
            return "verifying"
        return "succeeded" if state.spec is not None else "verifying"
    if current:
        return "upscaling"  # the cascade's draft is there, its refine pass is not
    if state.started:
        return "running"  # a cancel takes effect when the worker stops at a step boundary
    if state.deferred_until is not None:
        return "deferred"
    if state.lane is not None:
        return "routed"
    return "queued"


def _deliver(state: JobState) -> dict[str, Any]:
    """Which image the client gets: a passing one, else the best-scoring one (flagged)."""
    deliverable = [a for a in state.artifacts if a.deliverable and a.stage != "repaired"]
    if state.expected_text is None or not state.verifications:
        return {"delivered": deliverable[-1] if deliverable else None}
    passing = [v for v in state.verifications if v.passed]
    chosen = passing[-1] if passing else max(state.verifications, key=lambda v: v.score)
    by_uri = {a.uri: a for a in state.artifacts}
    return {
        "delivered": by_uri.get(chosen.artifact_uri),
        "verification": chosen,
        "flagged": not passing,
    }


def _milestones(state: JobState, now: datetime) -> dict[str, datetime]:
    reached = dict(state.milestones)
    stages = {a.stage for a in state.artifacts}
    for name, hit in (
        ("draft_ready", "draft" in stages),
        ("upscaled", "upscaled" in stages),
        ("verified", bool(state.verifications) and _concluded(state)),
        ("succeeded", state.status == "succeeded"),
        ("failed", state.status == "failed"),
        ("canceled", state.status == "canceled"),
    ):
        if hit:
            reached.setdefault(name, now)
    return reached


STAGE_ORDER = {"draft": 0, "final": 0, "upscaled": 1}


def _progressed(state: JobState, event: RenderProgress) -> JobState | None:
    """The job's progress, if the event is newer than what the record shows. Not recorded
    in ``seen_events`` (progress is idempotent: a repeat or an older step changes nothing),
    so a render's many steps never push real events out of the dedupe window."""
    if event.attempt < state.attempt or state.status not in ("running", "upscaling"):
        return None
    changed = False
    if event.partial is not None and event.partial not in state.partials:
        # Kept even when a later step was reported first; a new attempt's replace the last's.
        kept = state.partials if event.attempt == state.attempt else []
        partials = sorted([*kept, event.partial], key=lambda p: p.index)[-3:]
        state = state.model_copy(update={"partials": partials, "updated_at": utcnow()})
        changed = True
    old = state.progress
    rank = (event.attempt, STAGE_ORDER[event.stage], event.step)
    if old is not None and rank <= (old.attempt, STAGE_ORDER.get(old.stage, 0), old.step):
        return state if changed else None
    progress = Progress(
        stage=event.stage,
        attempt=event.attempt,
        step=event.step,
        steps=event.steps,
        at=event.occurred_at,
        preview=event.preview or (old.preview if old and old.stage == event.stage else None),
    )
    return state.model_copy(update={"progress": progress, "updated_at": utcnow()})


# ---- what each event type changes: a dict of updates, or None for nothing ---------------


@singledispatch
def _facts(event: Any, state: JobState) -> dict[str, Any] | None:
    """An event type the fold does not know changes nothing."""
    return None


def _superseded(state: JobState, event: RenderStarted | RenderCompleted | RenderFailed) -> bool:
    """An event of an attempt the job was rerouted away from changes nothing."""
    return event.attempt < state.attempt


def _spec_facts(state: JobState, event: GenerationRequested | GenerationRouted) -> dict[str, Any]:
    if state.spec is None:
        return {"spec": event.spec, "expected_text": event.spec.expected_text}
    return {}


@_facts.register
def _requested(event: GenerationRequested, state: JobState) -> dict[str, Any] | None:
    update = _spec_facts(state, event)
    update.update(created_at=event.occurred_at, fingerprint=event.fingerprint)
    return update


@_facts.register
def _routed(event: GenerationRouted, state: JobState) -> dict[str, Any] | None:
    update = _spec_facts(state, event)
    if event.attempt >= state.attempt and event.init_artifact_uri is None:
        # (A refine pass of a cascade keeps the job's lane: its artifact records the model.)
        update.update(attempt=event.attempt, deferred_until=None)
        if event.attempt > state.attempt:
            update["started"] = False
        rendering = event.attempt == state.attempt and (state.started or _current(state))
        if not rendering:  # read late, it must not relabel a render (a canary's) as stable
            update.update(lane=event.lane, model=event.model, version=event.version)
    if state.created_at is None:
        update["created_at"] = event.requested_at
    return update


@_facts.register
def _started(event: RenderStarted, state: JobState) -> dict[str, Any] | None:
    if _superseded(state, event):
        return None
    update: dict[str, Any] = {"started": True}
    if not _current(state):  # not the refine pass of a cascade
        update.update(lane=event.lane, model=event.model, version=event.version)
    return update


@_facts.register
def _completed(event: RenderCompleted, state: JobState) -> dict[str, Any] | None:
    if _superseded(state, event):
        return None
    update: dict[str, Any] = {}
    artifact = Artifact(
        stage=event.stage,
        attempt=event.attempt,
        uri=event.artifact_uri,
        width=event.width,
        height=event.height,
        model=event.model,
        version=event.version,
        deliverable=event.deliverable,
        instance=event.instance,
        provider=event.provider,
        cost_usd=event.cost_usd,
    )
    if artifact not in state.artifacts:
        update["artifacts"] = [*state.artifacts, artifact]
        costs = [a.cost_usd for a in update["artifacts"] if a.cost_usd is not None]
        update["cost_usd"] = round(sum(costs), 6) if costs else None
    update.update(started=True, timings=event.timings)
    if event.stage != "upscaled":
        update.update(lane=event.lane, model=event.model, version=event.version)
    if state.expected_text is None and event.expected_text:
        update["expected_text"] = event.expected_text
    return update


@_facts.register
def _deferred(event: GenerationDeferred, state: JobState) -> dict[str, Any] | None:
    if state.lane is not None and state.deferred_until is None:  # re-admitted already
        return {}
    return {
        "deferred_at": state.deferred_at or event.occurred_at,
        "deferred_until": event.not_before,
        "spec": state.spec or event.spec,
    }


@_facts.register
def _failed(event: RenderFailed, state: JobState) -> dict[str, Any] | None:
    if _superseded(state, event):
        return None
    return {"error": event.error, "failure_reason": event.reason or "error"}


@_facts.register
def _cancel_requested(event: CancelRequested, state: JobState) -> dict[str, Any] | None:
    return {"cancel_requested": True}


@_facts.register
def _canceled(event: RenderCanceled, state: JobState) -> dict[str, Any] | None:
    return {"started": False, "cancel_requested": True}


@_facts.register
def _rerouted(event: RenderRerouted, state: JobState) -> dict[str, Any] | None:
    update: dict[str, Any] = {
        "reroutes": [*state.reroutes, f"{event.lane} -> {event.to_lane}: {event.reason}"]
    }
    if event.attempt > state.attempt:
        update.update(attempt=event.attempt, lane=event.to_lane, started=False)
    return update


@_facts.register
def _verified(event: VerificationCompleted, state: JobState) -> dict[str, Any] | None:
    repaired = event.repaired_uri is not None
    record = Verification(
        expected=event.expected,
        attempt=event.attempt,
        threshold=event.threshold,
        read=event.repaired_read or "" if repaired else event.read,
        score=event.repaired_score or 0.0 if repaired else event.score,
        passed=event.final_passed,
        artifact_uri=event.repaired_uri or event.artifact_uri,
        error="; ".join(e for e in (event.error, event.repair_error) if e) or None,
        rendered_uri=event.artifact_uri,
        rendered_read=event.read,
        rendered_score=event.score,
        repaired=repaired,
        rerouted_to=event.rerouted_to,
    )
    update: dict[str, Any] = {"verifications": [*state.verifications, record]}
    if repaired:
        source = next((a for a in state.artifacts if a.uri == event.artifact_uri), None)
        update["artifacts"] = [
            *state.artifacts,
            Artifact(
                stage="repaired",
                attempt=event.attempt,
                uri=event.repaired_uri or "",
                width=source.width if source else 0,
                height=source.height if source else 0,
                model=source.model if source else "",
                version=source.version if source else "",
            ),
        ]
    return update


def fold(state: JobState | None, event: Any) -> JobState | None:
    """The new state, or None when the event changes nothing (duplicate or post-terminal)."""
    if state is None:
        state = JobState(job_id=event.job_id)
    event_id = str(event.event_id)
    if event_id in state.seen_events or state.terminal:
        return None
    if isinstance(event, RenderProgress):  # not a fact: not in the dedupe window
        return _progressed(state, event)
    update = _facts(event, state)
    if update is None:
        return None
    update["seen_events"] = [*state.seen_events[-(SEEN_LIMIT - 1) :], event_id]
    now = utcnow()
    update["updated_at"] = now
    new = state.model_copy(update=update)
    status = derive_status(new)
    if new.cancel_requested and status not in ("running", "succeeded", "failed"):
        status = "canceled"  # not on a GPU right now: canceled at once
    finished = now if status in ("succeeded", "failed", "canceled") else None
    new = new.model_copy(update={"status": status, "finished_at": finished, **_deliver(new)})
    return new.model_copy(update={"milestones": _milestones(new, now)})
