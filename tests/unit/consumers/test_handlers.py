"""Handlers without a broker: the router's decisions, the webhook retry step, placement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from consumers.router import Router
from consumers.webhooks import WebhookMetrics, after_attempt
from schemas.control import WorkerStatus
from schemas.events import (
    CancelRequested,
    GenerationDeferred,
    GenerationRequested,
    GenerationRouted,
    RenderStarted,
)
from schemas.exceptions import PoisonEvent
from schemas.records import WebhookDelivery, WebhookMessage
from schemas.spec import GenerationSpec
from schemas.topics import Topics
from services.config.routes import load_routes
from services.config.settings import Settings
from services.domain.lane_watch import LaneWatch
from services.domain.spill import Placement
from services.kafka.compacted_view import CompactedView
from services.kafka.lag_monitor import LagMonitor, spill_key
from services.webhooks.delivery import AttemptResult

ROUTES = load_routes(None)


def _watch(settings: Settings) -> LaneWatch:
    """A LaneWatch that is never started: lags and heartbeats are set by the test."""
    lags = LagMonitor(settings, Placement.watched_lanes(ROUTES), 1.0, spill=ROUTES.spill_lanes)
    control = CompactedView(settings, Topics().control, lambda b: b)
    return LaneWatch(Placement(settings, ROUTES, lags), control)  # type: ignore[arg-type]


def _request(priority: str = "normal", intent: str = "draft") -> GenerationRequested:
    spec = GenerationSpec(prompt="a poster", intent=intent, priority=priority)  # type: ignore[arg-type]
    return GenerationRequested(job_id="job_r", spec=spec, fingerprint="f")


def _ready(router: Router, lane: str, *, host: str, guest: str) -> None:
    """A worker of ``lane`` and a guest on its spill queue have reported ready."""
    now = datetime.now(UTC)
    for name, serves in ((host, "lane"), (guest, "spill")):
        router.placement.workers.items[name] = WorkerStatus(
            instance=name,
            lane=lane,
            serves=serves,
            health="ready",
            at=now,
        )


@pytest.fixture
def router() -> Router:
    return Router(ROUTES, Topics(), _watch(Settings()), CollectorRegistry())


async def test_router_routes_to_the_intent_s_lane(router: Router) -> None:
    (out,) = await router.handle(_request(), None)  # type: ignore[arg-type]
    routed = GenerationRouted.model_validate_json(out.value or b"")
    assert out.topic == Topics().lane("draft") and out.key == "job_r"
    assert (routed.lane, routed.sample_steps) == ("draft", ROUTES.lanes["draft"].sample_steps)


async def test_router_defers_a_low_priority_job_over_the_lane_s_threshold(router: Router) -> None:
    policy = ROUTES.lanes["draft"].admission
    assert policy is not None
    router.lags.lags["draft"] = policy.defer_lag + 1
    (out,) = await router.handle(_request("low"), None)  # type: ignore[arg-type]
    deferred = GenerationDeferred.model_validate_json(out.value or b"")
    assert out.topic == Topics().deferred and deferred.lane == "draft"
    assert deferred.not_before > datetime.now(UTC) + timedelta(seconds=policy.defer_s - 1)
    (normal,) = await router.handle(_request("normal"), None)  # type: ignore[arg-type]
    assert normal.topic == Topics().lane("draft")  # only deferrable priorities wait


async def test_router_spills_over_the_threshold_only_with_a_live_guest(router: Router) -> None:
    spill = ROUTES.lanes["draft"].spill
    assert spill is not None
    router.lags.lags["draft"] = spill.after_lag + 5
    (out,) = await router.handle(_request(), None)  # type: ignore[arg-type]
    assert out.topic == Topics().lane("draft")  # no guest has reported ready
    _ready(router, "draft", host="w-draft", guest="w-final+draft-spill")
    (spilled,) = await router.handle(_request(), None)  # type: ignore[arg-type]
    assert spilled.topic == Topics().spill("draft")
    assert router.lags.noted[spill_key("draft")] == 1


async def test_an_even_wait_goes_to_the_queue_whose_newest_job_came_first(router: Router) -> None:
    """A final lane worker and a draft worker each rendering a final: the next final goes
    where the older one renders (it ends first), unless the draft worker has drafts waiting
    beyond the one it renders."""
    spill = ROUTES.lanes["final"].spill
    assert spill is not None
    _ready(router, "final", host="w-final", guest="w-draft+final-spill")
    lags = router.lags.lags
    lags["final"] = lags[spill_key("final")] = spill.after_lag + 1
    final = _request(intent="final")

    async def place() -> str:
        (out,) = await router.handle(final, None)  # type: ignore[arg-type]
        router.lags.noted.clear()  # as the next poll would measure: the queues stay level
        return out.topic

    router.placement.placed_at = {"final": 2.0, spill_key("final"): 1.0}
    assert await place() == Topics().spill("final")  # the guest's final began first
    router.placement.placed_at = {"final": 1.0, spill_key("final"): 2.0}
    assert await place() == Topics().lane("final")
    router.placement.placed_at = {"final": 2.0, spill_key("final"): 1.0}
    _ready(router, "draft", host="w-draft", guest="w-final+draft-spill")
    lags["draft"] = 1  # the guest's own draft in flight: it is free next
    assert await place() == Topics().spill("final")
    lags["draft"] = 2  # a draft of its own waits too: it renders that first
    assert await place() == Topics().lane("final")
    lags["final"] += 1  # not a tie: the shorter wait wins whatever the order
    assert await place() == Topics().spill("final")


async def test_router_ignores_cancels_and_dead_letters_other_events(router: Router) -> None:
    assert await router.handle(CancelRequested(job_id="j"), None) == []  # type: ignore[arg-type]
    other = RenderStarted(job_id="j", lane="draft", model="m", version="v", instance="i")
    with pytest.raises(PoisonEvent, match="router expects generation.requested"):
        await router.handle(other, None)  # type: ignore[arg-type]


def _msg(attempt: int) -> WebhookMessage:
    return WebhookMessage(
        job_id="j",
        event="succeeded",
        webhook_id="msg_j_succeeded",
        url="https://h.example/x",
        body="{}",
        attempt=attempt,
    )


def test_a_failed_attempt_is_retried_later_then_dead_lettered_after_the_last() -> None:
    settings = Settings(webhook_max_attempts=3, webhook_backoff_s=5)
    metrics = WebhookMetrics(CollectorRegistry())
    retry = AttemptResult("retry", 503, "HTTP 503", retry_after_s=30)
    record, nxt = after_attempt(settings, _msg(1), retry, metrics)
    assert nxt.topic == Topics().webhooks_retry and nxt.key == "j:succeeded"
    again = WebhookMessage.model_validate_json(nxt.value or b"")
    assert again.attempt == 2 and again.webhook_id == "msg_j_succeeded"
    assert again.due_at >= datetime.now(UTC) + timedelta(seconds=29)  # Retry-After honoured
    assert WebhookDelivery.model_validate_json(record.value or b"").outcome == "retrying"
    record, dead = after_attempt(settings, _msg(3), retry, metrics)
    assert dead.topic == Topics().webhooks_dlq
    assert WebhookDelivery.model_validate_json(record.value or b"").outcome == "failed"
    (delivered,) = after_attempt(settings, _msg(2), AttemptResult("delivered", 204, None), metrics)
    assert WebhookDelivery.model_validate_json(delivered.value or b"").outcome == "delivered"
    gone = after_attempt(settings, _msg(1), AttemptResult("failed", 410, "HTTP 410"), metrics)
    assert [o.topic for o in gone][-1] == Topics().webhooks_dlq  # 410: no retry
