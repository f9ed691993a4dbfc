"""Webhook delivery on the real broker: retries through the delay topic, Retry-After, 410,
the DLQ and replay, SSRF refusals and redirects that are never followed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from producers.client import GenerationClient
from producers.webhook_receiver import verify_delivery
from schemas.records import WebhookDelivery, WebhookMessage
from schemas.spec import GenerationSpec
from services.apps.webhook_replay import replay
from services.config.settings import Settings
from services.kafka.local_broker import free_port
from tests.support import Stack, WebhookReceiver, read_topic, running_stack, wait_until

pytestmark = [pytest.mark.kafka]


@pytest.fixture
async def hooks(settings: Settings) -> AsyncIterator[Stack]:
    async with running_stack(
        settings, worker_lanes=["draft"], webhook_backoff_s=0.4, webhook_max_attempts=3
    ) as stack:
        yield stack


async def dead_letters(stack: Stack) -> list[WebhookMessage]:
    return [
        WebhookMessage.model_validate_json(r.value)
        for r in await read_topic(stack.settings, stack.topics.webhooks_dlq)
    ]


async def delivery(stack: Stack, job_id: str) -> WebhookDelivery:
    records = await read_topic(stack.settings, stack.topics.webhook_deliveries)
    return [
        WebhookDelivery.model_validate_json(r.value)
        for r in records
        if r.key.decode() == f"{job_id}:succeeded"
    ][-1]


async def test_failing_receiver_gets_retries_on_schedule_then_one_success(
    hooks: Stack, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [(429, {"Retry-After": "2"}), 503]
    job_id = await hooks.submit({"prompt": "a lamp", "webhook_url": receiver.url})
    first, second, third = await receiver.wait_for(3, timeout=60)
    assert second.at - first.at >= 1.9  # Retry-After honoured
    assert 0.2 <= third.at - second.at < 5  # backoff 0.4 s x2 with jitter (no Retry-After)
    ids = {d.headers["webhook-id"] for d in (first, second, third)}
    assert ids == {f"msg_{job_id}_succeeded"}  # stable across retries
    for d in (first, second, third):  # each attempt freshly signed, verifiable
        assert verify_delivery(d.body, d.headers, hooks.settings.webhooks.secret.get_secret_value())
    await wait_until(lambda: len(receiver.deliveries) >= 3, timeout=1, what="3")

    async def delivered() -> bool:
        return (await delivery(hooks, job_id)).outcome == "delivered"

    await wait_until(delivered, timeout=20, what="delivery record")
    assert (await delivery(hooks, job_id)).attempts == 3
    assert len(receiver.deliveries) == 3 and not await dead_letters(hooks)


async def test_gone_endpoint_stops_at_once_and_dead_letters_then_replay_delivers(
    hooks: Stack, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [410]
    job_id = await hooks.submit({"prompt": "a vase", "webhook_url": receiver.url})
    await receiver.wait_for(1)

    async def one_dead() -> bool:
        return len(await dead_letters(hooks)) == 1

    await wait_until(one_dead, timeout=20, what="a DLQ record")
    (dead,) = await dead_letters(hooks)
    assert (dead.job_id, dead.last_status) == (job_id, 410) and "Gone" in (dead.last_error or "")
    assert len(receiver.deliveries) == 1  # no retry after 410
    # The endpoint is fixed: the operator replays it.
    assert await replay(hooks.settings, {f"{job_id}:succeeded"}) == [f"{job_id}:succeeded"]
    deliveries = await receiver.wait_for(2, timeout=30)
    assert deliveries[1].headers["webhook-id"] == deliveries[0].headers["webhook-id"]
    assert json.loads(deliveries[1].body)["data"]["status"] == "succeeded"

    async def delivered() -> bool:
        return (await delivery(hooks, job_id)).outcome == "delivered"

    await wait_until(delivered, timeout=20, what="delivered after replay")


async def test_exhausted_retries_land_in_the_webhook_dlq(
    hooks: Stack, receiver: WebhookReceiver
) -> None:
    receiver.statuses = [500, 500, 500]
    job_id = await hooks.submit({"prompt": "a rug", "webhook_url": receiver.url})
    await receiver.wait_for(3, timeout=60)

    async def one_dead() -> bool:
        return len(await dead_letters(hooks)) == 1

    await wait_until(one_dead, timeout=20, what="a DLQ record")
    (dead,) = await dead_letters(hooks)
    assert (dead.job_id, dead.attempt, dead.last_error) == (job_id, 3, "HTTP 500")
    assert (await delivery(hooks, job_id)).outcome == "failed"


async def test_private_targets_and_redirects_to_loopback_are_refused(
    settings: Settings, receiver: WebhookReceiver
) -> None:
    target = WebhookReceiver(port=free_port())
    await target.start()
    try:
        # Only 127.0.0.1 is allowlisted: localhost (a name resolving to loopback) is not.
        receiver.statuses = [(302, {"Location": f"http://localhost:{target.port}/hooks"})] * 3
        async with running_stack(
            settings, worker_lanes=["draft"], webhook_backoff_s=0.05, webhook_max_attempts=2
        ) as stack:
            redirected = await stack.submit({"prompt": "a cup", "webhook_url": receiver.url})
            private = [
                f"http://localhost:{target.port}/hooks",
                "http://169.254.169.254/latest",
                "http://10.0.0.1/hooks",
                f"http://[::1]:{target.port}/hooks",
            ]
            # The gateway refuses them up front: 422 with the reason, nothing published.
            for url in private:
                resp = await stack.http.post(
                    "/v1/generations", json={"prompt": "a mug", "webhook_url": url}
                )
                assert resp.status_code == 422 and "webhook_url refused" in resp.text, url
            published = [
                json.loads(r.value)["spec"]["prompt"]
                for r in await read_topic(stack.settings, stack.topics.requests)
            ]
            assert published == ["a cup"]
            # Publishers on Kafka skip the gateway (and DNS can change): delivery checks again.
            async with GenerationClient(stack.settings) as client:
                refused = [
                    await client.submit(GenerationSpec(prompt=f"a mug {i}", webhook_url=url))
                    for i, url in enumerate(private)
                ]

            async def all_dead() -> bool:
                return len(await dead_letters(stack)) == 5

            await wait_until(all_dead, timeout=60, what="5 DLQ records")
            dead = {d.job_id: d for d in await dead_letters(stack)}
            assert "not followed" in (dead[redirected].last_error or "")
            for job_id in refused:
                assert (dead[job_id].last_error or "").startswith("refused:"), dead[job_id]
                assert dead[job_id].attempt == 1  # a refusal is never retried
        assert len(receiver.deliveries) == 2 and target.deliveries == []
    finally:
        await target.stop()
