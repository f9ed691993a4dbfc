"""Hosted lanes on the real broker against the contract servers: a Gemini draft lane with
an Ideogram 3.0 fallback lane beside a local final lane. End to end with cost, backpressure
on RESOURCE_EXHAUSTED, a safety block, the fallback for a dead or refusing provider, and a
canary from the local model to the hosted one."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.control import OpsCommand
from services.apps.ops_client import send_and_wait
from services.config.routes import load_routes
from services.domain.rollout import RolloutView
from services.kafka.local_broker import free_port
from services.storage.artifacts import open_store
from tests.conftest import _test_settings
from tests.contract_servers.common import Behaviour, Served
from tests.contract_servers.google import google_app
from tests.contract_servers.ideogram import ideogram_app
from tests.support import Stack, WebhookReceiver, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

GEMINI_KEY = "gk-contract-5f2d9c"
IDEOGRAM_KEY = "ik-contract-8a1e47"
SIZE = {"width": 256, "height": 256}


@pytest.fixture(scope="module")
def providers() -> Iterator[dict[str, Any]]:
    gapp, gb = google_app(GEMINI_KEY, scale=0.25)  # 1K draws 256 px: quick on 2 cores
    iapp, ib = ideogram_app(IDEOGRAM_KEY)
    with Served(gapp, free_port()) as g, Served(iapp, free_port()) as i:
        yield {"google": g.url, "ideogram": i.url, "gb": gb, "ib": ib}


def mix_routes(path: Path, providers: dict[str, Any]) -> Path:
    doc = {
        "models": {
            "tiny-sd": {"tiny": {"seed": 0}, "version": "tiny-v1"},
            "nano-banana-pro": {
                "provider": "gemini",
                "model_id": "gemini-3-pro-image",
                "base_url": providers["google"],
                "api_key_env": "LANES_TEST_GEMINI_KEY",
                "max_retries": 1,
                "probe_s": 30,
            },
            "ideogram-v3": {
                "provider": "ideogram",
                "model_id": "V_3",
                "base_url": providers["ideogram"],
                "api_key_env": "LANES_TEST_IDEOGRAM_KEY",
                "options": {"rendering_speed": "TURBO"},
            },
        },
        "lanes": {
            "draft": {
                "model": "nano-banana-pro",
                "max_concurrency": 2,
                "fallback_lane": "fallback",
                "typography": {"repair": False},
                **SIZE,
            },
            "final": {
                "model": "tiny-sd",
                "sample_steps": 1,
                "max_concurrency": 2,
                "typography": {"repair": False},
                **SIZE,
            },
            "fallback": {"model": "ideogram-v3", "typography": {"repair": False}, **SIZE},
        },
        "intents": {"draft": "draft", "final": "final"},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
async def mix(
    kafka_bootstrap: str,
    state_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    providers: dict[str, Any],
) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("mix")
    settings = _test_settings(kafka_bootstrap, state_dir, tmp).model_copy(
        update={
            "routes_file": mix_routes(tmp / "routes.yaml", providers),
            "heartbeat_s": 0.3,
            "canary_min_jobs": 100,
            "drain_timeout_s": 4.0,
        }
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LANES_TEST_GEMINI_KEY", GEMINI_KEY)
        env.setenv("LANES_TEST_IDEOGRAM_KEY", IDEOGRAM_KEY)
        stack = Stack(settings)
        await stack.start()
        try:
            await stack.wait_workers_ready()
            yield stack
        finally:
            await stack.stop()


@pytest.fixture(autouse=True)
def healthy(providers: dict[str, Any]) -> Iterator[None]:
    yield
    for b in (providers["gb"], providers["ib"]):
        b.down, b.throttle, b.api_key = (
            False,
            0,
            GEMINI_KEY if b is providers["gb"] else IDEOGRAM_KEY,
        )


async def submit(
    stack: Stack, receiver: WebhookReceiver, prompt: str, intent: str = "draft"
) -> str:
    return await stack.submit({"prompt": prompt, "intent": intent, "webhook_url": receiver.url})


async def test_a_hosted_lane_renders_stores_prices_and_calls_back(
    mix: Stack, providers: dict[str, Any], receiver: WebhookReceiver
) -> None:
    job_id = await submit(mix, receiver, 'a sneaker ad with the text "SALE"')
    job = await mix.wait_for_status(job_id, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job
    assert (job["lane"], job["model"], job["version"]) == (
        "draft",
        "nano-banana-pro",
        "gemini-3-pro-image",
    )
    (art,) = [a for a in job["artifacts"] if a["stage"] == "draft"]
    assert art["provider"] == "gemini" and art["cost_usd"] == pytest.approx(0.134)
    assert job["cost_usd"] == pytest.approx(0.134)
    assert (art["width"], art["height"]) == (256, 256)
    # The image is in the artifact store, served by the gateway (not the provider's URL).
    image = await mix.http.get(art["uri"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    (delivery,) = await receiver.wait_for(1)
    body = json.loads(delivery.body)
    assert body["data"]["cost_usd"] == pytest.approx(0.134)
    worker = mix.workers["draft"]
    labels = {"lane": "draft", "model": "nano-banana-pro", "version": "gemini-3-pro-image"}
    assert worker.registry.get_sample_value("lanes_worker_cost_usd_total", labels) >= 0.134
    assert worker.registry.get_sample_value("lanes_worker_images_total", labels) >= 1
    # The key went in the header and nowhere else: not in the job, not in any event body.
    assert GEMINI_KEY not in str(job) and GEMINI_KEY.encode() not in delivery.body
    assert open_store(mix.settings).check() is None


async def test_resource_exhausted_pauses_the_lane_and_loses_nothing(
    mix: Stack, providers: dict[str, Any], receiver: WebhookReceiver
) -> None:
    gb: Behaviour = providers["gb"]
    gb.calls.clear()
    gb.throttle, gb.retry_s, gb.delay_s, gb.max_in_flight_seen = 2, 1.5, 0.3, 0
    ids = [await submit(mix, receiver, f"throttled draft {i}") for i in range(5)]
    worker = mix.workers["draft"]
    # The lane pauses: its fetch cap drops to 0 (partitions paused, jobs wait in Kafka) and
    # the throttle shows in what its heartbeat reports.
    await wait_until(
        lambda: (
            worker.cap == 0
            and any(s.startswith("throttled") for s in worker.models.engine_states.values())
        ),
        timeout=30,
        what="the draft lane paused by the provider's 429",
    )
    jobs = [await mix.wait_for_status(i, {"succeeded", "failed"}, timeout=120) for i in ids]
    gb.delay_s = 0.0
    # One worker, many calls in flight on its event loop: up to the lane's cap (2), no more.
    assert gb.max_in_flight_seen == 2
    assert [j["status"] for j in jobs] == ["succeeded"] * 5
    assert all(j["lane"] == "draft" and not j["reroutes"] for j in jobs)  # waited, not moved
    # After the 429, no call went out until the provider's retryDelay had passed.
    times = [c["at"] for c in gb.calls]
    first_429 = times[0]
    assert min(t for t in times[2:]) >= first_429 + 1.5 - 0.05
    throttled = worker.registry.get_sample_value(
        "lanes_worker_provider_calls_total",
        {"lane": "draft", "model": "nano-banana-pro", "version": "gemini-3-pro-image",
         "outcome": "throttled"},
    )  # fmt: skip
    assert throttled >= 2
    await receiver.wait_for(5)
    await asyncio.sleep(1.0)
    terminal = Counter(json.loads(d.body)["data"]["job_id"] for d in receiver.deliveries)
    assert terminal == Counter({i: 1 for i in ids})  # one webhook each


async def test_a_safety_block_fails_the_job_with_reason_safety(
    mix: Stack, providers: dict[str, Any], receiver: WebhookReceiver
) -> None:
    ib: Behaviour = providers["ib"]
    before = len(ib.calls)
    job_id = await submit(mix, receiver, "[unsafe] something the filter blocks")
    job = await mix.wait_for_status(job_id, {"succeeded", "failed"})
    assert job["status"] == "failed" and job["failure_reason"] == "safety"
    assert "IMAGE_SAFETY" in job["error"]
    assert len(ib.calls) == before  # not rendered again on another engine
    (delivery,) = await receiver.wait_for(1)
    assert json.loads(delivery.body)["type"] == "generation.failed"


async def test_a_dead_or_refusing_provider_sends_jobs_to_the_fallback_lane(
    mix: Stack, providers: dict[str, Any], receiver: WebhookReceiver
) -> None:
    gb: Behaviour = providers["gb"]
    gb.down = True  # every call a 500: bounded retries, then the fallback
    job = await mix.wait_for_status(
        await submit(mix, receiver, 'dead provider "OPEN"'), {"succeeded", "failed"}
    )
    assert job["status"] == "succeeded" and job["lane"] == "fallback", job
    assert job["model"] == "ideogram-v3" and "provider_failed" in job["reroutes"][0]
    assert job["cost_usd"] == pytest.approx(0.03)  # Ideogram 3.0 Turbo
    gb.down = False
    gb.api_key = "rotated-elsewhere"  # our key is now wrong: the lane pauses its provider
    job = await mix.wait_for_status(
        await submit(mix, receiver, "wrong key"), {"succeeded", "failed"}
    )
    assert job["status"] == "succeeded" and job["lane"] == "fallback"
    assert "provider_unavailable" in job["reroutes"][0]
    calls = len(gb.calls)
    job = await mix.wait_for_status(
        await submit(mix, receiver, "while paused"), {"succeeded", "failed"}
    )
    assert job["lane"] == "fallback" and len(gb.calls) == calls  # no call while paused
    # The reason is visible where SREs look: `lanes ops status` (the workers' heartbeats).
    view = RolloutView(mix.settings, load_routes(mix.settings.routes_file))
    states: dict[str, str] = {}

    async def reported() -> bool:
        await view.load()
        for lane in view.lanes():
            for inst in lane.instances:
                states.update(inst.status.engine_states)
        return any("API key not valid" in s for s in states.values())

    await wait_until(reported, timeout=30, what="the paused engine in the heartbeat")
    assert any(
        k.startswith("nano-banana-pro") and v.startswith("paused") for k, v in states.items()
    )
    mix.workers["draft"].models.engines[mix.workers["draft"].models.stable].unavailable_until = 0


async def test_a_canary_from_the_local_model_to_a_hosted_one(
    mix: Stack, providers: dict[str, Any], receiver: WebhookReceiver
) -> None:
    result = await send_and_wait(
        mix.settings,
        OpsCommand(action="canary", lane="final", model="nano-banana-pro", percent=50),
    )
    assert result.outcome == "applied", result.reason
    worker = mix.workers["final"]
    await wait_until(lambda: worker.models.canary is not None, timeout=30, what="the canary loaded")
    ids = [await submit(mix, receiver, f"canary final {i}", intent="final") for i in range(10)]
    jobs = [await mix.wait_for_status(i, {"succeeded", "failed"}) for i in ids]
    assert {j["status"] for j in jobs} == {"succeeded"}
    versions = Counter(j["version"] for j in jobs)
    assert set(versions) == {"tiny-v1", "gemini-3-pro-image"}, versions
    hosted = [j for j in jobs if j["version"] == "gemini-3-pro-image"]
    assert all(j["artifacts"][0]["provider"] == "gemini" for j in hosted)
    local = [j for j in jobs if j["version"] == "tiny-v1"]
    assert all(j["artifacts"][0]["provider"] == "diffusers" for j in local)
    result = await send_and_wait(
        mix.settings, OpsCommand(action="rollback", lane="final", reason="A/B done")
    )
    assert result.outcome == "applied"
    await wait_until(lambda: worker.models.canary is None, timeout=30, what="rolled back")
    job = await mix.wait_for_status(
        await submit(mix, receiver, "after rollback", intent="final"), {"succeeded"}
    )
    assert job["version"] == "tiny-v1"


async def test_a_job_canceled_while_its_provider_is_throttled_is_never_sent(
    mix: Stack, providers: dict[str, Any], receiver: WebhookReceiver
) -> None:
    gb: Behaviour = providers["gb"]
    gb.calls.clear()
    gb.throttle, gb.retry_s = 1, 4.0
    job_id = await submit(mix, receiver, "canceled while throttled")
    await wait_until(lambda: len(gb.calls) == 1, timeout=30, what="the throttled call")
    resp = await mix.http.post(f"/v1/generations/{job_id}/cancel")
    assert resp.status_code == 202
    job = await mix.wait_for_status(job_id, {"canceled", "succeeded", "failed"}, timeout=60)
    assert job["status"] == "canceled"
    await asyncio.sleep(4.5)  # past the provider's retryDelay: still nothing sent for it
    assert len(gb.calls) == 1 and job.get("cost_usd") is None


async def test_a_worker_stopped_while_throttled_hands_its_jobs_on(
    mix: Stack, providers: dict[str, Any], receiver: WebhookReceiver
) -> None:
    gb: Behaviour = providers["gb"]
    gb.throttle, gb.retry_s = 1, 60.0  # longer than the drain: the job is still waiting
    job_id = await submit(mix, receiver, "held through a restart")
    worker = mix.workers["draft"]
    await wait_until(lambda: worker.cap == 0, timeout=30, what="throttled")
    await mix.stop_component("worker-draft")  # SIGTERM: drain 4 s, then let the job go
    assert worker.in_flight == 0
    mix.start_worker("draft")  # a fresh process: not throttled, the job redelivered to it
    await mix.wait_workers_ready(names=["draft"])
    job = await mix.wait_for_status(job_id, {"succeeded", "failed"}, timeout=90)
    assert job["status"] == "succeeded" and job["lane"] == "draft"  # never dropped
    await receiver.wait_for(1)
