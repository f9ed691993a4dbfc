"""Cascade and typography, on the real broker."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from producers.client import GenerationClient
from schemas.events import RenderCompleted, VerificationCompleted, parse_job_event
from schemas.spec import GenerationSpec
from services.config.settings import Settings
from services.typography.text import OcrReader
from tests.support import Stack, WebhookReceiver, read_topic, running_stack, write_routes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def _events(settings: Settings, topic: str) -> list:
    return [parse_job_event(r.value) for r in await read_topic(settings, topic)]


async def test_cascade_delivers_the_upscaled_png_at_target_size(stack: Stack) -> None:
    job = await stack.submit({"prompt": "a leather bag on a table", "intent": "final"})
    done = await stack.wait_for_status(job, {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded" and done["lane"] == "final"
    stages = [(a["stage"], a["width"], a["deliverable"]) for a in done["artifacts"]]
    assert stages == [("draft", 256, False), ("upscaled", 512, True)]
    assert done["delivered"]["stage"] == "upscaled"
    resp = await stack.http.get(f"/v1/generations/{job}/image")
    assert Image.open(io.BytesIO(resp.content)).size == (512, 512)


async def test_upscaler_forms_batches_under_a_burst(stack: Stack) -> None:
    calls_before = stack.metric("upscale", "lanes_worker_batch_size_count")
    async with GenerationClient(stack.settings) as client:
        jobs = [
            await client.submit(GenerationSpec(prompt=f"shoe {i}", intent="final"))
            for i in range(6)  # the final lane hands drafts on in pairs (its max_batch)
        ]
    for job in jobs:
        assert (await stack.wait_for_status(job, {"succeeded", "failed"}, timeout=180))[
            "status"
        ] == "succeeded"
    upscaled = [
        e
        for e in await _events(stack.settings, stack.topics.renders)
        if isinstance(e, RenderCompleted) and e.stage == "upscaled" and e.job_id in jobs
    ]
    assert len(upscaled) == 6
    assert max(e.timings.batch_size for e in upscaled) > 1
    assert stack.metric("upscale", "lanes_worker_batch_size_count") - calls_before < 6


async def test_summer_sale_passes_after_repair_reading_exactly_that_text(stack: Stack) -> None:
    job = await stack.submit({"prompt": 'a poster with the text "SUMMER SALE"', "intent": "draft"})
    done = await stack.wait_for_status(job, {"succeeded", "failed"})
    v = done["verification"]
    assert done["status"] == "succeeded" and not done["flagged"]
    assert v["repaired"] and v["passed"] and v["read"] == "SUMMER SALE"
    assert v["rendered_score"] < v["threshold"]  # the random-weight render itself fails
    assert done["delivered"]["stage"] == "repaired"
    # Independent check of what the client downloads.
    resp = await stack.http.get(f"/v1/generations/{job}/image")
    assert OcrReader().read(Image.open(io.BytesIO(resp.content))) == "SUMMER SALE"


@pytest.fixture
async def no_repair_stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={"sample_steps": 1, "width": 128, "height": 128},
        final={
            "sample_steps": 2,
            "width": 128,
            "height": 128,
            "typography": {"repair": False, "fallback_lane": "rerender", "max_attempts": 3},
        },
        rerender={"sample_steps": 2, "width": 128, "height": 128},
    )
    async with running_stack(settings, routes_file=routes) as stack:
        yield stack


async def test_without_repair_final_job_goes_to_fallback_and_best_artifact_is_flagged(
    no_repair_stack: Stack,
) -> None:
    stack = no_repair_stack
    job = await stack.submit({"prompt": 'label "ORGANIC"', "intent": "final"})
    done = await stack.wait_for_status(job, {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded" and done["flagged"] is True
    assert done["attempt"] == 3 and done["lane"] == "rerender"
    assert len(done["verifications"]) == 3
    assert all("typography" in r for r in done["reroutes"])
    assert [v["rerouted_to"] for v in done["verifications"]] == ["rerender", "rerender", None]
    best = max(done["verifications"], key=lambda v: v["score"])
    assert done["verification"] == best
    assert done["delivered"]["uri"] == best["artifact_uri"]
    on_rerender = [r for r in await read_topic(stack.settings, stack.topics.lane("rerender"))]
    assert len(on_rerender) == 2


async def test_subscribed_events_arrive_once_each_draft_before_verification(
    stack: Stack,
    receiver: WebhookReceiver,
) -> None:
    events = ["draft_ready", "upscaled", "verified", "succeeded"]
    job = await stack.submit(
        {
            "prompt": 'banner "BIG DEAL"',
            "intent": "final",
            "webhook_url": receiver.url,
            "webhook_events": events,
        }
    )
    await stack.wait_for_status(job, {"succeeded", "failed"}, timeout=120)
    await receiver.wait_for(4)
    await read_topic(stack.settings, stack.topics.jobs, settle_s=3.0)  # let any duplicate arrive
    types = [json.loads(d.body)["type"] for d in receiver.deliveries]
    assert types == [f"generation.{e}" for e in events]
    assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 4
    (verification,) = [
        e
        for e in await _events(stack.settings, stack.topics.verifications)
        if isinstance(e, VerificationCompleted) and e.job_id == job
    ]
    draft_delivered_at = datetime.fromtimestamp(
        receiver.deliveries[0].at, tz=verification.occurred_at.tzinfo
    )
    assert draft_delivered_at < verification.occurred_at


async def test_unreadable_artifact_fails_the_job_with_a_clear_reason(stack: Stack) -> None:
    from schemas.events import GenerationRequested, RenderCompleted, Timings
    from tests.support import produce_raw

    spec = GenerationSpec(prompt='sign "OPEN"', intent="draft")
    await produce_raw(
        stack.settings,
        stack.topics.requests,
        GenerationRequested(job_id="job_broken", spec=spec).to_bytes(),
        b"job_broken",
    )
    broken = stack.settings.artifacts_path / "job_broken" / "x.png"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a png")
    # A render event pointing at a corrupt file (as a broken disk or a bad writer would leave).
    event = RenderCompleted(
        job_id="job_broken",
        stage="draft",
        lane="draft",
        model="m",
        version="v",
        instance="i",
        artifact_uri=broken.as_uri(),
        width=64,
        height=64,
        seed=1,
        sample_steps=1,
        expected_text="OPEN",
        spec=spec,
        timings=Timings(queue_wait_ms=0, inference_ms=0, total_ms=0),
        attempt=5,
    )
    await produce_raw(stack.settings, stack.topics.renders, event.to_bytes(), b"job_broken")
    done = await stack.wait_for_status("job_broken", {"failed", "succeeded"})
    assert (
        done["status"] == "failed"
        and "cannot verify" in done["error"]
        and "not a readable image" in done["error"]
    )


async def test_ab_report_compares_engines_with_images(settings: Settings, tmp_path: Path) -> None:
    from services.apps.ab import run_ab

    prompts = ['a poster with the text "SUMMER SALE"', "a sneaker"]
    out = await run_ab(settings, ["tiny-sd", "tiny-sd-b"], prompts, tmp_path / "ab.html")
    page = out.read_text()
    assert page.count('src="data:image/png;base64,') == len(prompts) * 2
    for engine in ("tiny-sd (tiny-v1)", "tiny-sd-b (tiny-b1)"):
        # both jobs succeeded, on the local engine
        assert f"<td>{engine}</td><td>diffusers</td><td>2</td><td>2</td>" in page
    assert "typography pass rate" in page and "latency p95 s" in page
    assert "cost per image USD" in page
    table = out.with_suffix(".md").read_text()  # the same summary in Markdown
    assert "| tiny-sd (tiny-v1) | diffusers | 2 | 2 |" in table
