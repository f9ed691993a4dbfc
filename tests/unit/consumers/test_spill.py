"""Burst overflow: the spill rule, the device's priority turns, and the routes checks."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from consumers.lane_worker.device_turns import BetweenSteps, DeviceTurns
from services.config.routes import Routes, SpillSpec, checkpoint_dir, load_routes, routes_text
from services.domain.spill import should_spill
from services.engines.diffusion import DiffusionEngine, RenderOutput, RenderRequest
from services.engines.memory import MemoryBudget, ModelTooLarge, OutOfMemory

GB = 1024**3


def test_spill_only_past_the_threshold_with_a_live_guest_and_to_the_shorter_wait() -> None:
    policy = SpillSpec(after_lag=4)
    assert not should_spill(None, 50, 0, 1, 1)  # the lane has no spill policy
    assert not should_spill(policy, 4, 0, 1, 1)  # at the threshold: the lane's own queue
    assert not should_spill(policy, 9, 0, 1, 0)  # nobody serves the spill queue
    assert should_spill(policy, 5, 0, 1, 1)
    assert not should_spill(policy, 6, 6, 1, 1)  # spill queue as long: stay
    assert should_spill(policy, 6, 5, 1, 1)
    # per server: 3 lane workers with 9 waiting beat 1 guest with 4 waiting
    assert not should_spill(policy, 9, 4, 3, 1)
    assert should_spill(policy, 9, 2, 3, 1)
    # as short a wait: only to a spill queue that drains first
    assert not should_spill(policy, 6, 6, 1, 1, spill_drains_first=False)
    assert should_spill(policy, 6, 6, 1, 1, spill_drains_first=True)
    assert not should_spill(policy, 6, 7, 1, 1, spill_drains_first=True)


async def test_device_turns_serve_the_guest_first_then_arrival_order() -> None:
    device = DeviceTurns()
    order: list[str] = []

    async def use(name: str, priority: int) -> None:
        async with device.turn(priority):
            order.append(name)
            await asyncio.sleep(0.01)

    await device.acquire(1)  # a host batch is rendering
    waiters = [asyncio.create_task(use("host-a", 1)), asyncio.create_task(use("host-b", 1))]
    await asyncio.sleep(0)
    waiters.append(asyncio.create_task(use("guest", 0)))
    await asyncio.sleep(0)
    device.release()
    await asyncio.gather(*waiters)
    assert order == ["guest", "host-a", "host-b"]


async def test_a_cancelled_waiter_does_not_keep_the_device() -> None:
    device = DeviceTurns()
    await device.acquire(1)
    gone = asyncio.create_task(device.acquire(0))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    device.release()
    await asyncio.wait_for(device.acquire(1), 1)  # free again, not handed to the dead waiter


def test_budget_counts_the_weights_of_the_workers_other_models() -> None:
    held = [0]
    budget = MemoryBudget.from_gb(8, lambda: held[0])
    budget.check_model("draft", 3 * GB)
    held[0] = 6 * GB  # the host's model
    with pytest.raises(ModelTooLarge, match="held by the worker's other models"):
        budget.check_model("draft", 3 * GB)
    held[0] = 4 * GB
    budget.check_model("draft", 3 * GB)
    with pytest.raises(OutOfMemory):
        budget.check_batch(3 * GB, 2 * GB, 4)


def test_spill_and_assists_must_name_each_other() -> None:
    raw = yaml.safe_load(routes_text(None))
    raw["lanes"]["final"]["assists"] = []
    with pytest.raises(ValidationError, match="no lane assists or backfills it"):
        Routes.model_validate(raw)
    raw = yaml.safe_load(routes_text(None))
    del raw["lanes"]["draft"]["spill"]
    with pytest.raises(ValidationError, match="has no spill policy"):
        Routes.model_validate(raw)
    raw = yaml.safe_load(routes_text(None))
    raw["lanes"]["final"]["assists"] = ["final"]
    with pytest.raises(ValidationError, match="not another lane"):
        Routes.model_validate(raw)
    raw = yaml.safe_load(routes_text(None))
    raw["lanes"]["final"]["backfills"] = ["draft"]
    with pytest.raises(ValidationError, match="both assists and backfills"):
        Routes.model_validate(raw)
    routes = load_routes(None)
    assert routes.spill_lanes == ["draft", "final"]
    assert routes.lanes["final"].assists == ("draft",) and routes.lanes["draft"].backfills == (
        "final",
    )


@pytest.fixture(scope="module")
def two_engines(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[DiffusionEngine, DiffusionEngine]:
    """The host's and the guest's copy of one checkpoint (each lane loads its own)."""
    spec = load_routes(None).models["tiny-sd"]
    path = checkpoint_dir("tiny-sd", spec, tmp_path_factory.mktemp("models"))
    return (
        DiffusionEngine.load(path, name="tiny-sd", version=spec.version),
        DiffusionEngine.load(path, name="tiny-sd", version=spec.version),
    )


@pytest.mark.slow
async def test_a_guest_batch_runs_between_the_host_renders_steps_and_both_images_are_intact(
    two_engines: tuple[DiffusionEngine, DiffusionEngine],
) -> None:
    host_engine, guest_engine = two_engines
    final = RenderRequest(
        prompt="a final render", width=128, height=128, steps=12, guidance_scale=5.0, seed=3
    )
    draft = RenderRequest(
        prompt="a draft", width=64, height=64, steps=1, guidance_scale=0.0, seed=4
    )
    alone_final = np.asarray(host_engine.render(final).image)
    alone_draft = np.asarray(guest_engine.render(draft).image)

    device, gpu = DeviceTurns(), ThreadPoolExecutor(max_workers=1)
    steps_done = threading.Event()
    guest_done_at_step: list[int] = []
    step = [0]

    def host_between() -> float:
        step[0] += 1
        if step[0] == 3:
            steps_done.set()
        time.sleep(0.02)  # give the event loop a moment to queue the guest's batch
        return 0.0

    def host_render(between: BetweenSteps | None) -> list[RenderOutput]:
        assert between is not None

        def hook() -> float:
            host_between()
            return between()

        return host_engine.render_batch([final], None, hook)

    def guest_render(between: BetweenSteps | None) -> list[RenderOutput]:
        out = guest_engine.render_batch([draft])
        guest_done_at_step.append(step[0])
        return out

    try:
        host = asyncio.create_task(device.render(gpu, host_render, priority=1, preemptible=True))
        await asyncio.to_thread(steps_done.wait, 30)
        async with device.turn(0):  # the host holds no turn here; the window decides
            (guest_out,) = await device.render(gpu, guest_render, priority=0, preempt=True)
        assert not host.done()  # the draft did not wait for the 12-step render
        (host_out,) = await host
    finally:
        gpu.shutdown()
    assert 3 <= guest_done_at_step[0] < 12
    assert np.array_equal(np.asarray(guest_out.image), alone_draft)
    assert np.array_equal(np.asarray(host_out.image), alone_final)


async def test_without_a_preemptible_render_the_guest_runs_on_its_own() -> None:
    device, gpu = DeviceTurns(), ThreadPoolExecutor(max_workers=1)
    try:
        seen: list[object] = []
        result = await device.render(
            gpu, lambda between: seen.append(between) or "ran", priority=0, preempt=True
        )
    finally:
        gpu.shutdown()
    assert result == "ran" and seen == [None]


def test_a_host_takes_no_new_jobs_while_its_guest_holds_some(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from consumers.lane_worker.gpu_process import GpuProcess, Urgency
    from consumers.lane_worker.models import LaneModels
    from consumers.lane_worker.worker import LaneWorker
    from services.config.settings import Settings

    settings = Settings(state_dir=tmp_path)
    routes = load_routes(None)
    shared = GpuProcess(settings, routes, CollectorRegistry(), "gpu-0-final")
    host = LaneWorker(shared, "final", LaneModels(settings, "final", routes))
    guest = LaneWorker(shared, "draft", LaneModels(settings, "draft", routes), Urgency.ASSISTED)
    assert host.guests == [guest] and guest.process is host.process
    assert (guest.lane.instance, guest.lane.source, guest.lane.serves) == (
        "gpu-0-final+draft-spill",
        "lanes.lane.draft.spill",
        "spill",
    )
    assert guest.lane.group.endswith("lanes-lane-draft-spill") and host.lane.group.endswith(
        "lanes-lane-final"
    )
    assert host.cap == routes.lanes["final"].max_concurrency
    guest.slots.hold(("job-1", 1, False))
    assert host.cap == 0
    host.slots.freed.clear()
    guest.slots.release(("job-1", 1, False))
    assert host.cap == routes.lanes["final"].max_concurrency and host.slots.freed.is_set()
    # A backfilled lane's guest is the other way round: it yields to the host.
    backfill = LaneWorker(
        shared, "upscale", LaneModels(settings, "upscale", routes), Urgency.BACKFILL
    )
    assert backfill.turn.may_preempt() is False and backfill.turn.preemptible() is True
    assert backfill.cap == routes.lanes["upscale"].max_concurrency
    host.slots.hold(("job-2", 1, False))
    assert backfill.cap == 0 and guest.cap == routes.lanes["draft"].max_concurrency
    backfill.slots.hold(("job-3", 1, False))
    assert (
        host.cap == routes.lanes["final"].max_concurrency
    )  # a less urgent peer never holds it back


async def test_a_guest_waiting_for_a_turn_is_let_in_when_the_host_render_starts() -> None:
    device, gpu = DeviceTurns(), ThreadPoolExecutor(max_workers=1)
    steps_left = threading.Event()

    def host_render(between: BetweenSteps | None) -> str:
        assert between is not None
        for _ in range(200):  # until the guest's work has run between two steps
            time.sleep(0.005)
            between()
            if steps_left.is_set():
                return "host"
        return "host never preempted"

    try:
        await device.acquire(1)  # the host took its turn; its render has not started yet
        guest_turn = asyncio.create_task(device.acquire(0))
        await asyncio.sleep(0.01)
        assert not guest_turn.done()  # no render to preempt yet: it waits
        host = asyncio.create_task(device.render(gpu, host_render, priority=1, preemptible=True))
        assert await asyncio.wait_for(guest_turn, 5) is False  # in, without the turn
        ran = await device.render(
            gpu, lambda between: steps_left.set() or "guest", priority=0, preempt=True
        )
        assert ran == "guest" and await host == "host"
        device.release()
    finally:
        gpu.shutdown()


async def test_only_a_more_urgent_batch_runs_between_a_renders_steps() -> None:
    device, gpu = DeviceTurns(), ThreadPoolExecutor(max_workers=1)
    log: list[str] = []
    release = threading.Event()

    def backfill_render(between: BetweenSteps | None) -> str:  # a final borrowed at priority 2
        assert between is not None
        for _ in range(400):
            time.sleep(0.005)
            between()
            if release.is_set():
                break
        log.append("backfill done")
        return "backfill"

    try:
        backfill = asyncio.create_task(
            device.render(gpu, backfill_render, priority=2, preemptible=True)
        )
        await asyncio.sleep(0.05)
        # Another backfill batch (same priority) does not get in between: it runs after.
        later = asyncio.create_task(
            device.render(
                gpu, lambda between: log.append("backfill 2") or "b2", priority=2, preempt=True
            )
        )
        await asyncio.sleep(0.05)
        assert log == []
        # The host's own draft (priority 1) does.
        assert (
            await device.render(
                gpu, lambda between: log.append("host") or "h", priority=1, preempt=True
            )
            == "h"
        )
        assert log == ["host"] and not backfill.done()
        release.set()
        assert (await backfill, await later) == ("backfill", "b2")
        assert log == ["host", "backfill done", "backfill 2"]
    finally:
        gpu.shutdown()


async def test_a_batch_queued_after_the_last_step_does_not_hold_back_the_renders_result() -> None:
    """A draft queued while a borrowed final decodes its image (no step boundary left) runs
    next on the GPU thread, after the final's result is handed back, not before."""
    device, gpu = DeviceTurns(), ThreadPoolExecutor(max_workers=1)
    decoding = threading.Event()
    draft_queued = threading.Event()
    finished: list[str] = []

    def final_render(between: BetweenSteps | None) -> str:
        assert between is not None
        between()  # the last step boundary
        decoding.set()
        assert draft_queued.wait(5)  # the draft arrives during the decode
        return "final"

    def draft_render(between: BetweenSteps | None) -> str:
        time.sleep(0.3)
        finished.append("draft")
        return "draft"

    async def final() -> str:
        out = await device.render(gpu, final_render, priority=2, preemptible=True)
        finished.append("final")
        return out

    try:
        borrowed = asyncio.create_task(final())
        assert await asyncio.to_thread(decoding.wait, 5)
        draft = asyncio.create_task(device.render(gpu, draft_render, priority=1, preempt=True))
        await asyncio.sleep(0.05)  # the draft is queued for the next boundary
        draft_queued.set()
        assert (await borrowed, await draft) == ("final", "draft")
        assert finished == ["final", "draft"]
    finally:
        gpu.shutdown()
