"""Live progress on the real broker: workers report denoising steps (and latent previews),
the gateway streams them as Server-Sent Events, resumable with Last-Event-ID, and a
``progress`` webhook goes out when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.apps.job_events import SseEvent, parse_sse
from services.config.settings import Settings
from tests.support import Stack, WebhookReceiver, running_stack, write_routes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def stream(http: httpx.AsyncClient, job_id: str, last_id: int = 0) -> list[SseEvent]:
    headers = {"Last-Event-ID": str(last_id)} if last_id else {}
    lines: list[str] = []
    async with http.stream(
        "GET", f"/v1/generations/{job_id}/events", headers=headers, timeout=90
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            lines.append(line)
    return list(parse_sse(lines))


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> Any:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={
            "sample_steps": 24,
            "width": 128,
            "height": 128,
            "preview_every": 2,
            "typography": {"repair": False},
        },
    )
    async with running_stack(settings, routes_file=routes, progress_interval_s=0.0) as s:
        await s.wait_workers_ready()
        yield s


async def test_progress_streams_in_order_and_resumes(
    stack: Stack, receiver: WebhookReceiver
) -> None:
    job_id = await stack.submit(
        {
            "prompt": "a lighthouse at dusk",
            "intent": "draft",
            "webhook_url": receiver.url,
            "webhook_events": ["progress", "succeeded"],
        }
    )
    events = await stream(stack.http, job_id)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # rising, never repeated
    kinds = [e.event for e in events]
    assert kinds[0] == "status" and kinds[-1] == "end"
    assert events[-1].data["status"] == "succeeded"
    progress = [e.data for e in events if e.event == "progress"]
    assert progress, kinds
    steps = [p["step"] for p in progress]
    assert steps == sorted(steps) and all(p["steps"] == 24 for p in progress)
    assert any((p["preview"] or "").startswith("data:image/jpeg;base64,") for p in progress)
    milestones = [e.data["milestone"] for e in events if e.event == "milestone"]
    assert milestones.index("draft_ready") < milestones.index("succeeded")

    # Resume after the first milestone: it is not sent again; what followed it is.
    first = next(e for e in events if e.event == "milestone")
    again = await stream(stack.http, job_id, last_id=first.id or 0)
    assert all((e.id or 0) > (first.id or 0) for e in again)
    resumed = [e.data["milestone"] for e in again if e.event == "milestone"]
    assert first.data["milestone"] not in resumed and "succeeded" in resumed
    assert again[-1].event == "end"

    # The progress webhook, once per mark, before the terminal one.
    deliveries = await receiver.wait_for(2)
    types = [json.loads(d.body)["type"] for d in receiver.deliveries]
    assert "generation.progress" in types and types[-1] == "generation.succeeded"
    first_progress = next(
        json.loads(d.body)
        for d in deliveries
        if json.loads(d.body)["type"] == "generation.progress"
    )
    assert 0 < first_progress["data"]["progress"]["step"] < 24


async def test_events_of_an_unknown_job_are_a_404(stack: Stack) -> None:
    resp = await stack.http.get("/v1/generations/job_nope/events")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"


async def test_lanes_submit_wait_draws_a_progress_bar_from_the_stream(stack: Stack) -> None:
    """`lanes submit --wait`, as a user runs it, with a tenant's key from LANES_API_KEY."""
    import asyncio
    import os
    import subprocess
    import sys

    from services.apps.registry import child_env

    key = await stack.new_key("cli")
    env = child_env(
        stack.settings,
        os.environ,
        LANES_API_KEY=key,
        LANES_GATEWAY_URL=str(stack.http.base_url).rstrip("/"),
        LANES_LOG_LEVEL="WARNING",
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.apps.cli", "submit", "a red kite", "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, (out[-2000:], done.stderr[-2000:])
    assert "[" in out and "/24" in out and "#" in out  # the bar, driven by progress events
    assert "running" in out and "succeeded" in out
    assert "image: http" in out and "sig=" in out  # a signed URL the user can open
