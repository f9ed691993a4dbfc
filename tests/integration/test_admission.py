"""Admission on the real broker: tenant quotas (429), and cancel in each state."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from schemas.events import parse_job_event
from services.config.settings import Quota, Settings
from services.process.ports import free_port
from tests.support import (
    Stack,
    WebhookReceiver,
    read_topic,
    running_gateway,
    running_stack,
    wait_until,
    write_routes,
)

pytestmark = [pytest.mark.kafka]


async def test_over_quota_tenant_gets_429_with_retry_after_and_nothing_published(
    settings: Settings,
) -> None:
    async with running_stack(
        settings, worker_lanes=[], tenant_quotas={"acme": Quota(rate_per_s=0.1, burst=2)}
    ) as stack:
        for i in range(2):
            await stack.submit({"prompt": f"acme {i}", "tenant": "acme"})
        resp = await stack.http.post("/v1/generations", json={"prompt": "acme 3", "tenant": "acme"})
        assert resp.status_code == 429 and "over its request quota" in resp.json()["detail"]
        assert 1 <= int(resp.headers["Retry-After"]) <= 10
        await stack.submit({"prompt": "another tenant", "tenant": "globex"})  # unaffected
        published = [
            parse_job_event(r.value) for r in await read_topic(settings, stack.topics.requests)
        ]
        assert sorted(e.spec.prompt for e in published) == ["acme 0", "acme 1", "another tenant"]


async def test_cancel_a_queued_job_at_once_and_it_never_renders(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    async with running_stack(settings, worker_lanes=[]) as stack:
        job_id = await stack.submit(
            {"prompt": "a boat", "intent": "draft", "webhook_url": receiver.url}
        )
        await stack.wait_for_status(job_id, {"routed"})  # waiting in its lane: no worker yet
        resp = await stack.http.post(f"/v1/generations/{job_id}/cancel")
        assert resp.status_code == 202 and resp.json()["status"] == "canceled"
        job = await stack.wait_for_status(job_id, {"canceled"}, timeout=30)
        assert job["finished_at"] and not job["artifacts"]
        stack.start_worker("draft")  # the worker that now reaches the job skips it
        await stack.wait_workers_ready(names=["draft"])
        after = await stack.submit({"prompt": "a kite", "intent": "draft"})
        await stack.wait_for_status(after, {"succeeded"})
        assert (await stack.http.get(f"/v1/generations/{job_id}")).json()["status"] == "canceled"
        (delivery,) = await receiver.wait_for(1)
        assert json.loads(delivery.body)["type"] == "generation.canceled"
        assert (await stack.http.post(f"/v1/generations/{job_id}/cancel")).status_code == 409
        assert (await stack.http.post("/v1/generations/job_nope/cancel")).status_code == 404
        renders = [
            parse_job_event(r.value) for r in await read_topic(settings, stack.topics.renders)
        ]
        assert not any(e.job_id == job_id and e.type == "render.completed" for e in renders)
    assert len(receiver.deliveries) == 1


async def test_cancel_a_running_job_stops_it_at_a_step_boundary(
    settings: Settings, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={"sample_steps": 150, "width": 256, "height": 256, "typography": {"repair": False}},
    )
    async with running_stack(settings, worker_lanes=["draft"], routes_file=routes) as stack:
        await stack.wait_workers_ready()
        job_id = await stack.submit(
            {"prompt": "a long render", "intent": "draft", "webhook_url": receiver.url}
        )
        await stack.wait_for_status(job_id, {"running"})
        resp = await stack.http.post(f"/v1/generations/{job_id}/cancel")
        assert resp.status_code == 202 and resp.json()["status"] == "canceling"
        job = await stack.wait_for_status(job_id, {"canceled", "succeeded"}, timeout=60)
        assert job["status"] == "canceled" and not job["artifacts"]

        async def canceled_event() -> list[object]:
            return [
                e
                for e in (
                    parse_job_event(r.value)
                    for r in await read_topic(settings, stack.topics.renders)
                )
                if e.type == "render.canceled"
            ]

        (event,) = await canceled_event()
        assert event.at_step is not None and event.at_step < 150  # stopped mid-render
        (delivery,) = await receiver.wait_for(1)
        assert json.loads(delivery.body)["type"] == "generation.canceled"
        # The worker carries on with the next job.
        nxt = await stack.submit({"prompt": "next", "intent": "draft", "width": 64, "height": 64})
        await stack.wait_for_status(nxt, {"succeeded"}, timeout=120)


async def test_burst_defers_low_priority_jobs_and_readmits_them_with_nothing_lost(
    settings: Settings, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={
            "sample_steps": 1,
            "width": 64,
            "height": 64,
            "max_concurrency": 4,
            "max_batch": 4,
            "typography": {"repair": False},
            "admission": {"defer_lag": 2, "defer_s": 1.0, "defer_priorities": ["low", "normal"]},
        },
    )
    async with running_stack(
        settings, worker_lanes=[], routes_file=routes, admission_poll_s=0.2
    ) as stack:
        # The burst: the lane has no worker yet, so its lag builds up.
        burst = [await stack.submit({"prompt": f"burst {i}", "priority": "high"}) for i in range(4)]
        await asyncio.sleep(1.0)  # admission polls the lag every 0.2 s
        low = [
            await stack.submit(
                {"prompt": f"low {i}", "priority": "low", "webhook_url": receiver.url}
            )
            for i in range(3)
        ]
        critical = await stack.submit({"prompt": "critical", "priority": "critical"})
        jobs = [await stack.wait_for_status(j, {"deferred"}) for j in low]
        assert [j["queue_position"] for j in jobs] == [1, 2, 3]
        # Critical work is never deferred: it goes to its lane (once the fold has it).
        await stack.wait_for_status(critical, {"routed"}, timeout=30)
        # Cancel one deferred job: it ends at once.
        assert (await stack.http.post(f"/v1/generations/{low[2]}/cancel")).status_code == 202
        await stack.wait_for_status(low[2], {"canceled"})
        # Still busy: the rest are parked again rather than admitted.
        await asyncio.sleep(2.5)
        assert {
            (await stack.http.get(f"/v1/generations/{j}")).json()["status"] for j in low[:2]
        } == {"deferred"}
        # The burst drains once a worker serves the lane; the deferred jobs follow.
        stack.start_worker("draft")
        done = [
            await stack.wait_for_status(j, {"succeeded", "failed"}, timeout=120)
            for j in burst + low[:2] + [critical]
        ]
        assert {j["status"] for j in done} == {"succeeded"}
        assert (await stack.http.get(f"/v1/generations/{low[2]}")).json()["status"] == "canceled"
        deliveries = await receiver.wait_for(3)
        assert sorted(json.loads(d.body)["type"] for d in deliveries) == [
            "generation.canceled",
            "generation.succeeded",
            "generation.succeeded",
        ]


async def test_a_tenants_quota_holds_for_a_fleet_of_three_gateways(settings: Settings) -> None:
    """Requests spread over 3 replicas: the fleet admits the tenant's quota (burst plus
    rate x time) within 10%, not 3 times it; each replica takes a third."""
    quota = Quota(rate_per_s=5, burst=15)
    s = settings.model_copy(update={"tenant_quotas": {"acme": quota}, "heartbeat_s": 0.5})
    async with running_stack(s, worker_lanes=[]) as stack:
        key = await stack.new_key("acme")
        async with (
            stack.client(key) as http1,
            running_gateway(s.model_copy(update={"gateway_port": free_port()}), key) as (
                second,
                http2,
            ),
            running_gateway(s.model_copy(update={"gateway_port": free_port()}), key) as (
                third,
                http3,
            ),
        ):
            await _fleet_admits_the_quota(stack, [second, third], [http1, http2, http3], quota)


async def _fleet_admits_the_quota(
    stack: Stack, replicas: list[Any], clients: list[Any], quota: Quota
) -> None:
    assert stack.gateway is not None
    apps = [stack.gateway.config.app, *replicas]

    def all_see_three() -> bool:
        return all(app.state.publisher.fleet.live() == 3 for app in apps)

    await wait_until(all_see_three, timeout=30, what="each replica counting 3")
    accepted = sent = 0
    started = time.monotonic()
    while time.monotonic() - started < 10:
        resp = await clients[sent % 3].post(
            "/v1/generations", json={"prompt": f"a cup {sent}", "tenant": "acme"}
        )
        assert resp.status_code in (202, 429), resp.text
        accepted += resp.status_code == 202
        sent += 1
        await asyncio.sleep(1 / 40)
    expected = quota.burst + quota.rate_per_s * (time.monotonic() - started)
    assert abs(accepted - expected) <= 0.1 * expected, (accepted, expected, sent)
    assert sent > 2 * expected  # the tenant asked for far more than its quota
