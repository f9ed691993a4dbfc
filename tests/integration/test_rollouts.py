"""Model rollouts on the real broker, two worker instances per lane: deploy, canary,
promote, automatic rollback, rolling restart, the autoscaling signal, admin endpoints."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from consumers.lane_worker.models import canary_bucket
from schemas.control import LaneDesired, OpsCommand, WorkerStatus
from services.apps.ops_client import send_and_wait
from services.config.routes import checkpoint_dir, load_routes
from services.config.settings import Settings
from services.domain.rollout import RolloutView
from tests.support import Stack, WebhookReceiver, read_topic, wait_until, write_routes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

INSTANCES = ("draft-a", "draft-b")


@pytest.fixture
async def fleet(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    """The whole stack with two worker instances on the draft lane."""
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={
            "max_concurrency": 2,
            "max_batch": 2,
            "sample_steps": 1,
            "width": 64,
            "height": 64,
            "typography": {"repair": False},
        },
    )
    s = settings.model_copy(
        update={
            "routes_file": routes,
            "heartbeat_s": 0.3,
            "canary_min_jobs": 3,
            "worker_stale_s": 5.0,
            "kafka_session_timeout_ms": 6000,
            "drain_timeout_s": 10.0,
        }
    )
    stack = Stack(s, worker_lanes=[])
    await stack.start()
    for name in INSTANCES:
        stack.start_worker("draft", instance=name)
    try:
        await stack.wait_workers_ready(names=INSTANCES)
        yield stack
    finally:
        await stack.stop()


async def ops(stack: Stack, action: str, **kw: Any) -> LaneDesired:
    result = await send_and_wait(stack.settings, OpsCommand(action=action, lane="draft", **kw))
    assert result.outcome == "applied", result.reason
    return await converged(stack, result.revision or 0)


async def converged(stack: Stack, revision: int, timeout: float = 90) -> LaneDesired:
    """Wait until both instances report the revision and are ready (as `lanes ops status`)."""
    view = RolloutView(stack.settings, load_routes(stack.settings.routes_file))
    found: dict[str, Any] = {}

    async def check() -> bool:
        stack.check_alive()
        await view.load()
        (lane,) = view.lanes()
        live = [i for i in lane.instances if i.live]
        found["lane"] = lane
        return lane.desired.revision >= revision and len(live) == 2 and lane.converged

    await wait_until(check, timeout=timeout, what=f"both instances at revision {revision}")
    return found["lane"].desired


async def submit_all(stack: Stack, receiver: WebhookReceiver, n: int, tag: str) -> list[str]:
    return [
        await stack.submit({"prompt": f"{tag} {i}", "intent": "draft", "webhook_url": receiver.url})
        for i in range(n)
    ]


async def finished(stack: Stack, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    return {j: await stack.wait_for_status(j, {"succeeded", "failed"}) for j in job_ids}


def terminal_webhooks(receiver: WebhookReceiver) -> Counter[str]:
    return Counter(json.loads(d.body)["data"]["job_id"] for d in receiver.deliveries)


async def test_deploy_canary_promote_serves_every_job_once_on_the_right_version(
    fleet: Stack, receiver: WebhookReceiver
) -> None:
    before = await submit_all(fleet, receiver, 4, "before")
    await ops(fleet, "deploy", model="tiny-sd", version="tiny-v2", tiny_seed=2)
    on_v2 = await submit_all(fleet, receiver, 4, "deployed")
    # A job still queued when the canary starts is split like any other (its version is the
    # one that renders it): these render before it.
    await finished(fleet, on_v2)
    # A 50% canary of v3: each job's version follows from its id alone.
    await ops(fleet, "canary", model="tiny-sd", version="tiny-v3", tiny_seed=3, percent=50)
    canaried = await submit_all(fleet, receiver, 12, "canary")
    await finished(fleet, canaried)  # a job still queued at the promote renders on the new stable
    state = await ops(fleet, "promote")
    assert (state.stable.version, state.previous.version if state.previous else None) == (
        "tiny-v3",
        "tiny-v2",
    )
    promoted = await submit_all(fleet, receiver, 4, "promoted")

    jobs = await finished(fleet, before + on_v2 + canaried + promoted)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    assert {jobs[j]["version"] for j in on_v2} == {"tiny-v2"}
    assert {jobs[j]["version"] for j in promoted} == {"tiny-v3"}
    for j in canaried:
        assert jobs[j]["version"] == ("tiny-v3" if canary_bucket(j) < 50 else "tiny-v2"), j
    assert len({jobs[j]["version"] for j in canaried}) == 2  # both versions served
    # Both instances served (the lane is really shared), and every job got one webhook.
    assert {a["instance"] for j in jobs.values() for a in j["artifacts"]} == set(INSTANCES)
    await receiver.wait_for(len(jobs))
    await asyncio.sleep(1.0)
    assert terminal_webhooks(receiver) == Counter({j: 1 for j in jobs})


async def test_version_that_fails_to_load_is_rolled_back_automatically(
    fleet: Stack, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    await ops(fleet, "deploy", model="tiny-sd", version="tiny-v2", tiny_seed=2)
    missing = tmp_path / "no-such-checkpoint"
    result = await send_and_wait(
        fleet.settings,
        OpsCommand(
            action="deploy", lane="draft", model="sd-broken", version="2026-11", path=str(missing)
        ),
    )
    assert result.outcome == "applied"
    during = await submit_all(fleet, receiver, 6, "during")
    state = await converged(fleet, (result.revision or 0) + 1)
    assert state.actor == "control-plane" and state.stable.version == "tiny-v2"
    assert "failed to load" in (state.reason or "") and "model_index.json" in (state.reason or "")
    jobs = await finished(fleet, during)
    assert {(j["status"], j["version"]) for j in jobs.values()} == {("succeeded", "tiny-v2")}
    await receiver.wait_for(len(during))
    await asyncio.sleep(1.0)
    assert terminal_webhooks(receiver) == Counter({j: 1 for j in during})


async def test_canary_whose_renders_fail_is_rolled_back_and_its_jobs_rerendered_on_stable(
    fleet: Stack, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    # A checkpoint that loads but cannot render: its scheduler config is broken.
    routes = load_routes(fleet.settings.routes_file)
    good = checkpoint_dir("tiny-sd", routes.models["tiny-sd"], fleet.settings.models_path)
    broken = tmp_path / "broken-ckpt"
    shutil.copytree(good, broken)
    sched = broken / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "prediction_type": "bogus"}))

    result = await send_and_wait(
        fleet.settings,
        OpsCommand(
            action="canary",
            lane="draft",
            model="tiny-sd",
            version="tiny-broken",
            path=str(broken),
            percent=60,
        ),
    )
    assert result.outcome == "applied"
    await converged(fleet, result.revision or 0)
    jobs_ids = await submit_all(fleet, receiver, 12, "canary")
    state = await converged(fleet, (result.revision or 0) + 1)
    assert state.canary is None and state.actor == "control-plane"
    assert "tiny-broken" in (state.reason or "") and "failed" in (state.reason or "")

    jobs = await finished(fleet, jobs_ids)
    # Nothing lost: a job the canary failed was rendered again on the stable version.
    assert {(j["status"], j["version"]) for j in jobs.values()} == {("succeeded", "tiny-v1")}
    retried = [j for j in jobs.values() if j["reroutes"]]
    assert retried and all("tiny-broken failed" in j["reroutes"][0] for j in retried)
    await receiver.wait_for(len(jobs_ids))
    await asyncio.sleep(1.0)
    assert terminal_webhooks(receiver) == Counter({j: 1 for j in jobs_ids})


async def test_rolling_restart_keeps_the_lane_serving(
    fleet: Stack, receiver: WebhookReceiver
) -> None:
    result = await send_and_wait(fleet.settings, OpsCommand(action="restart", lane="draft"))
    assert result.outcome == "applied"
    submitted: list[str] = []

    async def trickle() -> None:
        while True:
            submitted.extend(await submit_all(fleet, receiver, 1, f"rolling {len(submitted)}"))
            await asyncio.sleep(0.25)

    feeder = asyncio.create_task(trickle())
    try:

        async def restarted() -> bool:
            fleet.check_alive()
            return all(
                fleet.workers[n].generation == 1 and fleet.workers[n].ready for n in INSTANCES
            )

        await wait_until(restarted, timeout=120, what="both instances restarted")
        await asyncio.sleep(1.0)
    finally:
        feeder.cancel()
    jobs = await finished(fleet, submitted)
    assert len(jobs) >= 5 and {j["status"] for j in jobs.values()} == {"succeeded"}
    # One at a time: the heartbeats never show both instances out of service at once.
    out: dict[str, bool] = {}
    both_out = False
    for record in await read_topic(fleet.settings, fleet.topics.workers):
        status = WorkerStatus.model_validate_json(record.value)
        out[status.instance] = status.health in ("draining", "restarting")
        both_out |= all(out.get(n, False) for n in INSTANCES)
    assert out and not both_out
    await receiver.wait_for(len(submitted))
    assert terminal_webhooks(receiver) == Counter({j: 1 for j in submitted})


async def test_autoscaling_signal_and_admin_endpoints(fleet: Stack) -> None:
    # Pause the lane: jobs wait in Kafka, the lag grows, the desired replica count follows.
    await ops(fleet, "pause", reason="maintenance")
    waiting = [await fleet.submit({"prompt": f"queued {i}", "intent": "draft"}) for i in range(6)]
    registry = fleet.component_registry("control")

    def desired() -> float:
        return registry.get_sample_value("lanes_autoscale_desired_replicas", {"lane": "draft"}) or 0

    await wait_until(
        lambda: (registry.get_sample_value("lanes_lane_consumer_lag", {"lane": "draft"}) or 0) >= 6,
        timeout=30,
        what="lag of 6 on the control plane's metrics",
    )
    assert desired() >= 1
    assert registry.get_sample_value("lanes_lane_replicas", {"lane": "draft"}) == 2

    resp = await fleet.http.get("/v1/admin/lanes/draft")
    assert resp.status_code == 200
    body = resp.json()
    assert body["desired"]["paused"] is True and body["desired"]["reason"] == "maintenance"
    assert sorted(i["status"]["instance"] for i in body["instances"]) == list(INSTANCES)
    assert all(i["current"] and i["live"] for i in body["instances"])
    assert (await fleet.http.get("/v1/admin/lanes/nope")).status_code == 404

    await ops(fleet, "resume")
    jobs = await finished(fleet, waiting)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
