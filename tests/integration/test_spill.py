"""Burst overflow on the real broker: a draft burst past the lane's threshold spills to the
final lane's worker, which renders the spilled drafts as draft-lane jobs, each exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from producers.client import GenerationClient
from schemas.control import WorkerStatus
from schemas.events import GenerationRouted, RenderCompleted, parse_job_event
from schemas.spec import GenerationSpec
from services.config.settings import Settings
from tests.support import Stack, read_topic, running_stack, wait_until, write_routes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SMALL = {"sample_steps": 2, "width": 128, "height": 128, "max_wait_ms": 5}


async def guest_reported_ready(stack: Stack, instance: str) -> None:
    """Until the guest's ready heartbeat is on lanes.workers, which the router places by."""

    async def ready() -> bool:
        beats = [
            WorkerStatus.model_validate_json(r.value)
            for r in await read_topic(stack.settings, stack.topics.workers)
        ]
        return any(b.instance == instance and b.health == "ready" for b in beats)

    await wait_until(ready, timeout=30, what=f"{instance}'s ready heartbeat")
    await asyncio.sleep(1.0)  # the router follows the same topic; let it read the beat


async def submit_all_and_wait(
    stack: Stack, *, finals: int, drafts: int
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Submit the finals, then the drafts, back to back; wait until every job succeeded."""
    async with GenerationClient(stack.settings) as client:
        final_ids = [
            await client.submit(GenerationSpec(prompt=f"final {i}", intent="final"))
            for i in range(finals)
        ]
        draft_ids = [
            await client.submit(GenerationSpec(prompt=f"draft {i}", intent="draft"))
            for i in range(drafts)
        ]
    done = [
        await stack.wait_for_status(j, {"succeeded", "failed"}, timeout=120)
        for j in final_ids + draft_ids
    ]
    assert {d["status"] for d in done} == {"succeeded"}
    return final_ids, draft_ids, done


async def test_draft_burst_spills_to_the_final_workers_guest_and_each_job_renders_once(
    settings: Settings, tmp_path: Path
) -> None:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={**SMALL, "max_concurrency": 2, "max_batch": 1, "spill": {"after_lag": 2}},
        final={**SMALL, "max_concurrency": 1, "assists": ["draft"]},
    )
    async with running_stack(
        settings, routes_file=routes, worker_lanes=["draft", "final"]
    ) as stack:
        await stack.wait_workers_ready()
        host = stack.workers["final"]
        (guest,) = host.guests
        assert (guest.lane.name, guest.lane.serves, guest.lane.source) == (
            "draft",
            "spill",
            stack.topics.spill("draft"),
        )

        await guest_reported_ready(stack, guest.lane.instance)
        finals, drafts, done = await submit_all_and_wait(stack, finals=2, drafts=16)
        assert all(d["lane"] == "draft" for d in done[2:])

        on_lane = [
            r.key.decode() for r in await read_topic(stack.settings, stack.topics.lane("draft"))
        ]
        spilled = [
            r.key.decode() for r in await read_topic(stack.settings, stack.topics.spill("draft"))
        ]
        # Every draft was placed once, in the lane's queue or its spill queue, and the burst
        # past the threshold did spill.
        assert sorted(on_lane + spilled) == sorted(drafts)
        assert len(on_lane) >= 3 and spilled
        routed = [
            parse_job_event(r.value)
            for r in await read_topic(stack.settings, stack.topics.spill("draft"))
        ]
        assert all(
            isinstance(e, GenerationRouted) and e.lane == "draft" and e.sample_steps == 2
            for e in routed
        )

        completed = [
            e
            for e in map(
                parse_job_event,
                (r.value for r in await read_topic(stack.settings, stack.topics.renders)),
            )
            if isinstance(e, RenderCompleted)
        ]
        assert Counter(e.job_id for e in completed if e.job_id in drafts) == Counter(drafts)
        by_job = {e.job_id: e for e in completed}
        # The spilled drafts were rendered by the final worker's guest, as draft-lane jobs.
        assert {by_job[j].instance for j in spilled} == {guest.lane.instance}
        assert all(by_job[j].lane == "draft" for j in spilled)
        assert {by_job[j].instance for j in finals} == {host.lane.instance}
        assert stack.metric("final", "lanes_worker_jobs_total", outcome="ok") == 2
        assert host.registry.get_sample_value(
            "lanes_worker_jobs_total",
            {"lane": "draft", "model": "tiny-sd", "version": "tiny-v1", "outcome": "ok"},
        ) == len(spilled)


async def test_final_burst_backfills_the_idle_draft_worker_and_drafts_still_come_first(
    settings: Settings, tmp_path: Path
) -> None:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={**SMALL, "max_concurrency": 2, "max_batch": 1, "backfills": ["final"]},
        final={
            **SMALL,
            "sample_steps": 6,
            "max_concurrency": 1,
            "max_batch": 1,
            "spill": {"after_lag": 1},
        },
    )
    async with running_stack(
        settings, routes_file=routes, worker_lanes=["draft", "final"]
    ) as stack:
        await stack.wait_workers_ready()
        draft_host = stack.workers["draft"]
        (guest,) = draft_host.guests
        assert (guest.lane.name, guest.turn.urgency, draft_host.turn.urgency) == ("final", 2, 1)

        await guest_reported_ready(stack, guest.lane.instance)
        finals, drafts, done = await submit_all_and_wait(stack, finals=10, drafts=3)

        spilled = [
            r.key.decode() for r in await read_topic(stack.settings, stack.topics.spill("final"))
        ]
        on_lane = [
            r.key.decode() for r in await read_topic(stack.settings, stack.topics.lane("final"))
        ]
        assert sorted(spilled + on_lane) == sorted(finals) and spilled
        completed = [
            e
            for e in map(
                parse_job_event,
                (r.value for r in await read_topic(stack.settings, stack.topics.renders)),
            )
            if isinstance(e, RenderCompleted)
        ]
        assert Counter(e.job_id for e in completed) == Counter(finals + drafts)
        by_job = {e.job_id: e for e in completed}
        assert {by_job[j].instance for j in spilled} == {guest.lane.instance}
        assert all(by_job[j].lane == "final" and by_job[j].sample_steps == 6 for j in spilled)
        # The draft worker's own drafts stay on the draft worker.
        assert {by_job[j].instance for j in drafts} == {draft_host.lane.instance}
