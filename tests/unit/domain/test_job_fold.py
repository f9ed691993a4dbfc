from __future__ import annotations

import itertools
from datetime import UTC, datetime

from schemas.events import (
    GenerationRequested,
    GenerationRouted,
    RenderCompleted,
    RenderFailed,
    RenderStarted,
    Timings,
    VerificationCompleted,
)
from schemas.spec import GenerationSpec
from services.domain.job_fold import fold

JOB = "job_1"
SPEC = GenerationSpec(prompt='poster "SUMMER SALE"', webhook_url="https://example.com/h")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _events(with_text: bool = True, rendered_by: str = "v1") -> list:
    spec = SPEC if with_text else GenerationSpec(prompt="a shoe")
    common = dict(job_id=JOB, lane="draft")
    events = [
        GenerationRequested(job_id=JOB, spec=spec),
        GenerationRouted(
            spec=spec,
            model="m",
            version="v1",
            sample_steps=2,
            guidance_scale=0,
            width=64,
            height=64,
            seed=1,
            requested_at=NOW,
            **common,
        ),
        RenderStarted(model="m", version=rendered_by, instance="i", **common),
        RenderCompleted(
            stage="draft",
            model="m",
            version=rendered_by,
            instance="i",
            artifact_uri="file:///a.png",
            width=64,
            height=64,
            seed=1,
            sample_steps=2,
            expected_text=spec.expected_text,
            timings=Timings(queue_wait_ms=1, inference_ms=2, total_ms=3),
            **common,
        ),
    ]
    if with_text:
        events.append(
            VerificationCompleted(
                job_id=JOB,
                artifact_uri="file:///a.png",
                expected="SUMMER SALE",
                read="SUMMER SALE",
                score=1.0,
                passed=True,
                threshold=0.8,
                ocr_ms=1,
            )
        )
    return events


def _fold_all(events: list):
    state = None
    for e in events:
        state = fold(state, e) or state
    return state


def test_status_progresses_through_the_lifecycle() -> None:
    seen = []
    state = None
    for e in _events():
        state = fold(state, e)
        seen.append(state.status)
    assert seen == ["queued", "routed", "running", "verifying", "succeeded"]
    assert state.finished_at is not None and state.verification.passed


def test_job_without_text_succeeds_on_render() -> None:
    assert _fold_all(_events(with_text=False)).status == "succeeded"


def test_any_arrival_order_gives_the_same_outcome() -> None:
    for order in itertools.permutations(_events()):
        state = _fold_all(list(order))
        assert state.status == "succeeded", [e.type for e in order]
        assert state.lane == "draft" and len(state.artifacts) == 1
        assert state.spec == SPEC


def test_a_canary_render_keeps_its_version_whichever_event_arrives_last() -> None:
    # The router names the stable version; the worker rendered on its canary. Read late,
    # the routed event must not relabel the job with the version that did not render it.
    for order in itertools.permutations(_events(rendered_by="v2")):
        state = _fold_all(list(order))
        assert state.status == "succeeded", [e.type for e in order]
        assert (state.version, state.artifacts[0].version) == ("v2", "v2"), [e.type for e in order]


def test_redelivered_event_changes_nothing() -> None:
    events = _events()
    state = _fold_all(events[:3])
    assert fold(state, events[2]) is None


def test_terminal_state_is_final() -> None:
    state = _fold_all(_events())
    late_failure = RenderFailed(job_id=JOB, lane="draft", error="boom")
    assert fold(state, late_failure) is None


def test_render_failure_fails_the_job_with_reason() -> None:
    events = _events()[:3] + [
        RenderFailed(job_id=JOB, lane="draft", error="height must be divisible by 8")
    ]
    state = _fold_all(events)
    assert state.status == "failed" and "divisible" in state.error


def test_cancel_ends_a_waiting_job_at_once_and_a_running_one_when_its_worker_stops() -> None:
    from schemas.events import CancelRequested, RenderCanceled

    requested, routed, started, completed = _events(with_text=False)
    waiting = _fold_all([requested, routed, CancelRequested(job_id=JOB)])
    assert (waiting.status, "canceled" in waiting.milestones) == ("canceled", True)
    assert fold(waiting, started) is None  # terminal: a late render changes nothing

    running = _fold_all([requested, routed, started, CancelRequested(job_id=JOB)])
    assert running.status == "running" and running.cancel_requested
    stopped = fold(running, RenderCanceled(job_id=JOB, lane="draft", at_step=3))
    assert stopped.status == "canceled" and not stopped.artifacts
    # A render that finished before the cancel reached it: the job succeeded, once.
    raced = _fold_all([requested, routed, started, completed, CancelRequested(job_id=JOB)])
    assert raced.status == "succeeded"


def test_progress_keeps_the_latest_step_without_filling_the_dedupe_window() -> None:
    from schemas.events import RenderProgress

    state = None
    for e in _events()[:3]:  # requested, routed, started: running
        state = fold(state, e) or state
    assert state is not None and state.status == "running"
    seen = list(state.seen_events)

    def step(n: int, preview: str | None = None) -> RenderProgress:
        return RenderProgress(
            job_id=JOB, lane="draft", stage="draft", step=n, steps=4, preview=preview
        )

    state = fold(state, step(2, "data:image/jpeg;base64,AA==")) or state
    assert state.progress is not None and state.progress.step == 2
    assert fold(state, step(1)) is None  # an older step changes nothing
    state = fold(state, step(3)) or state
    assert (state.progress.step, state.progress.preview) == (3, "data:image/jpeg;base64,AA==")
    assert state.seen_events == seen and state.status == "running"
    for e in _events()[3:]:
        state = fold(state, e) or state
    assert state.terminal and fold(state, step(4)) is None  # nothing after the end


def test_partial_images_are_kept_in_index_order_even_behind_a_later_step() -> None:
    from schemas.events import PartialImage, RenderProgress

    state = None
    for e in _events()[:3]:
        state = fold(state, e) or state

    def partial(step: int, index: int) -> RenderProgress:
        image = PartialImage(
            index=index, step=step, uri=f"file:///p{index}.png", width=64, height=64
        )
        return RenderProgress(
            job_id=JOB, lane="draft", stage="draft", step=step, steps=8, partial=image
        )

    state = fold(state, partial(6, 1)) or state
    later = fold(state, partial(2, 0))  # an older step, but a partial image not seen yet
    assert later is not None and [p.index for p in later.partials] == [0, 1]
    assert later.progress is not None and later.progress.step == 6
    assert fold(later, partial(2, 0)) is None  # the same one again changes nothing
    public = later.public("https://lanes.example")
    assert public["partials"][0]["uri"].startswith("https://lanes.example/v1/generations/")
