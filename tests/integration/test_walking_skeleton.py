"""The walking skeleton end to end, on the real broker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from schemas.events import GenerationRequested
from schemas.records import DeadLetter, JobState
from services.config.settings import PLACEHOLDER_WEBHOOK_SECRET, Settings
from tests.support import (
    Stack,
    WebhookReceiver,
    produce_raw,
    read_topic,
    running_stack,
    unsigned,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def verify_standard_webhook(
    secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300
) -> None:
    """An independent implementation of the Standard Webhooks verification steps."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) <= tolerance_s, "stale timestamp"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    candidates = [
        s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")
    ]
    assert any(hmac.compare_digest(expected, c) for c in candidates), "signature mismatch"


async def test_post_to_signed_webhook_with_png_and_verification(
    stack: Stack, receiver: WebhookReceiver
) -> None:
    job_id = await stack.submit(
        {
            "prompt": 'a poster with the text "SUMMER SALE"',
            "intent": "draft",
            "webhook_url": receiver.url,
            "metadata": {"sku": "A-1"},
        }
    )
    (delivery,) = await receiver.wait_for(1)
    verify_standard_webhook(PLACEHOLDER_WEBHOOK_SECRET, delivery.headers, delivery.body)

    payload = json.loads(delivery.body)
    assert payload["type"] == "generation.succeeded"
    data = payload["data"]
    assert data["job_id"] == job_id and data["status"] == "succeeded"
    assert data["metadata"] == {"sku": "A-1"}
    assert data["verification"]["expected"] == "SUMMER SALE"
    assert 0.0 <= data["verification"]["score"] <= 1.0
    assert data["model"] == "tiny-sd" and data["version"] == "tiny-v1"
    assert data["timings"]["inference_ms"] > 0

    resp = await stack.http.get(f"/v1/generations/{job_id}/image")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(resp.content))
    assert image.format == "PNG" and image.size == (256, 256)

    status = (await stack.http.get(f"/v1/generations/{job_id}")).json()
    assert status["status"] == "succeeded" and status["lane"] == "draft"
    assert unsigned(status["verification"]) == unsigned(data["verification"])  # signed anew


async def test_draft_and_final_intents_use_different_lanes(stack: Stack) -> None:
    draft = await stack.submit({"prompt": "a red shoe", "intent": "draft"})
    final = await stack.submit({"prompt": "a red shoe", "intent": "final"})
    d = await stack.wait_for_status(draft, {"succeeded", "failed"})
    f = await stack.wait_for_status(final, {"succeeded", "failed"})
    assert (d["status"], d["lane"]) == ("succeeded", "draft")
    assert (f["status"], f["lane"]) == ("succeeded", "final")
    assert d["artifacts"][0]["stage"] == "draft"
    assert [a["stage"] for a in f["artifacts"]] == ["draft", "upscaled"]  # final is a cascade
    # No expected text: verification is skipped.
    assert d["verification"] is None and d["expected_text"] is None

    on_draft = {
        r.key.decode() for r in await read_topic(stack.settings, stack.topics.lane("draft"))
    }
    on_final = {
        r.key.decode() for r in await read_topic(stack.settings, stack.topics.lane("final"))
    }
    assert draft in on_draft and final in on_final  # the stack is shared: other jobs too
    assert draft not in on_final and final not in on_draft


@pytest.fixture
async def poisoned(settings: Settings) -> AsyncIterator[Stack]:
    """A stack of its own: this test writes garbage into every topic it reads."""
    async with running_stack(settings) as own:
        yield own


async def test_malformed_event_goes_to_dlq_and_next_job_succeeds(poisoned: Stack) -> None:
    stack = poisoned
    await produce_raw(stack.settings, stack.topics.requests, b"{not json", key=b"bad-1")
    # Well-formed JSON of an unknown type, too.
    await produce_raw(
        stack.settings,
        stack.topics.requests,
        json.dumps({"type": "generation.exploded", "job_id": "x"}).encode(),
        key=b"bad-2",
    )
    # And on every other topic a consumer group reads.
    for topic in (
        stack.topics.lane("draft"),
        stack.topics.renders,
        stack.topics.verifications,
        stack.topics.jobs,
    ):
        await produce_raw(stack.settings, topic, b"\x00garbage", key=b"bad-3")
    job_id = await stack.submit({"prompt": "a blue mug", "intent": "draft"})
    done = await stack.wait_for_status(job_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    stack.check_alive()

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(stack.settings, stack.topics.dlq)
    ]
    by_group: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_group.setdefault(letter.consumer_group, []).append(letter)
    router_letters = by_group[stack.settings.groups.router]
    assert {base64.b64decode(x.key_b64 or "") for x in router_letters} == {b"bad-1", b"bad-2"}
    for letter in router_letters:
        assert letter.source_topic == stack.topics.requests
        assert letter.source_offset >= 0 and letter.source_partition >= 0
        assert letter.error.startswith("invalid event")
    groups = stack.settings.groups
    for group in (groups.lane("draft"), groups.verifier, groups.jobs, groups.webhooks):
        assert group in by_group, sorted(by_group)
    bad1 = next(x for x in router_letters if base64.b64decode(x.key_b64 or "") == b"bad-1")
    assert base64.b64decode(bad1.value_b64 or "") == b"{not json"


async def test_restarted_gateway_still_reports_finished_job(stack: Stack) -> None:
    job_id = await stack.submit({"prompt": 'shop sign "OPEN"', "intent": "draft"})
    before = await stack.wait_for_status(job_id, {"succeeded"})
    await stack.stop_gateway()
    await stack.start_gateway()  # a new process would rebuild from lanes.jobs the same way
    after = (await stack.http.get(f"/v1/generations/{job_id}")).json()
    assert after["status"] == "succeeded"
    assert unsigned(after["artifacts"]) == unsigned(before["artifacts"])
    assert unsigned(after["verification"]) == unsigned(before["verification"])
    image = await stack.http.get(f"/v1/generations/{job_id}/image")
    assert image.status_code == 200


async def test_invalid_body_is_422_with_reason_and_nothing_published(stack: Stack) -> None:
    cases = [
        ({"intent": "draft"}, "prompt"),
        ({"prompt": "x", "intent": "sketch"}, "intent"),
        ({"prompt": "x", "width": 500}, "width"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "webhook_url": "not a url"}, "webhook_url"),
        ({"prompt": "x", "colour": "red"}, "colour"),
    ]
    before = len(await read_topic(stack.settings, stack.topics.requests))
    for body, field in cases:
        resp = await stack.http.post("/v1/generations", json=body)
        assert resp.status_code == 422, (body, resp.text)
        # An RFC 9457 problem: a sentence naming the field, and one entry per field.
        assert resp.headers["content-type"] == "application/problem+json"
        problem = resp.json()
        assert problem["status"] == 422 and field in problem["detail"], resp.text
        assert any(field in ".".join(map(str, e["loc"])) for e in problem["errors"]), resp.text
    resp = await stack.http.post(
        "/v1/generations", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and "JSON" in resp.json()["detail"], resp.text
    after = await read_topic(stack.settings, stack.topics.requests)
    assert len(after) == before  # nothing published


async def test_idempotency_key_returns_same_job_and_publishes_once(stack: Stack) -> None:
    body = {"prompt": "a green lamp", "intent": "draft"}
    first = await stack.http.post("/v1/generations", json=body, headers={"Idempotency-Key": "k-1"})
    second = await stack.http.post("/v1/generations", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    clash = await stack.http.post(
        "/v1/generations", json={**body, "prompt": "a red lamp"}, headers={"Idempotency-Key": "k-1"}
    )
    assert clash.status_code == 422 and "Idempotency-Key" in clash.text
    requests = await read_topic(stack.settings, stack.topics.requests)
    ids = [GenerationRequested.model_validate_json(r.value).job_id for r in requests]
    assert ids.count(first.json()["job_id"]) == 1


async def test_redelivered_terminal_state_sends_one_webhook(
    stack: Stack, receiver: WebhookReceiver
) -> None:
    job_id = await stack.submit({"prompt": "a chair", "webhook_url": receiver.url})
    await receiver.wait_for(1)
    final = [
        JobState.model_validate_json(r.value)
        for r in await read_topic(stack.settings, stack.topics.jobs)
        if r.key.decode() == job_id
    ][-1]
    assert final.status == "succeeded"
    # Redeliver the terminal state, then again after the dispatcher restarts (state from Kafka).
    await produce_raw(
        stack.settings, stack.topics.jobs, final.model_dump_json().encode(), job_id.encode()
    )
    await stack.stop_component("webhooks")
    from consumers import webhooks

    stack.start_component("webhooks", lambda stop: webhooks.run(stack.settings, stop))
    await produce_raw(
        stack.settings, stack.topics.jobs, final.model_dump_json().encode(), job_id.encode()
    )
    await read_topic(stack.settings, stack.topics.jobs, settle_s=3.0)
    assert len(receiver.deliveries) == 1


async def test_every_process_serves_metrics_and_health(stack: Stack) -> None:
    import httpx

    from consumers import router
    from services.kafka.local_broker import free_port

    metrics = await stack.http.get("/metrics")
    assert "lanes_gateway_requests_total" in metrics.text
    assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
    # A consumer process serves the same endpoints on its metrics port.
    port = free_port()
    own = stack.settings.model_copy(
        update={"metrics_port": port, "group_prefix": stack.settings.cluster.group_prefix + "m."}
    )
    stack.start_component("router-m", lambda stop: router.run(own, stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        from tests.support import wait_until

        async def ready() -> bool:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(ready, timeout=30, what="router ready")
        text = (await client.get("/metrics")).text
        assert "lanes_consumer_events_total" in text and "lanes_consumer_handle_seconds" in text
    await stack.stop_component("router-m")
