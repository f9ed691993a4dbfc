"""Lane workers under load, on the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from producers.client import GenerationClient
from schemas.events import GenerationRequested, RenderCompleted, RenderStarted, parse_job_event
from schemas.records import JobState
from schemas.spec import GenerationSpec
from services.apps.registry import child_env, command, workers
from services.config.routes import load_routes
from services.config.settings import Settings
from services.engines.batching import choose_batch_cap
from services.kafka.lag_monitor import LagMonitor
from tests.support import (
    Stack,
    WebhookReceiver,
    produce_raw,
    read_topic,
    running_stack,
    wait_until,
    write_routes,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def _events(settings: Settings, topic: str) -> list:
    return [parse_job_event(r.value) for r in await read_topic(settings, topic)]


async def _submit_many(settings: Settings, n: int, **spec: object) -> list[str]:
    async with GenerationClient(settings) as client:
        return [
            await client.submit(GenerationSpec(prompt=f"product shot {i}", **spec))
            for i in range(n)
        ]


async def _wait_all(stack: Stack, job_ids: list[str], timeout: float = 120) -> list[dict]:
    return [
        await stack.wait_for_status(j, {"succeeded", "failed"}, timeout=timeout) for j in job_ids
    ]


@pytest.fixture
async def flood_stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={
            "max_concurrency": 3,
            "max_batch": 3,
            "max_wait_ms": 50,
            "sample_steps": 2,
            "width": 128,
            "height": 128,
        },
    )
    async with running_stack(settings, routes_file=routes) as stack:
        yield stack


async def test_flood_never_exceeds_cap_pauses_resumes_and_batches(flood_stack: Stack) -> None:
    stack = flood_stack
    jobs = await _submit_many(stack.settings, 30)
    done = await _wait_all(stack, jobs)
    assert {d["status"] for d in done} == {"succeeded"}
    worker = stack.workers["draft"]
    # Measured by the worker: never more than the cap held at once, and the cap was reached.
    assert worker.max_in_flight == 3
    assert stack.metric("draft", "lanes_worker_in_flight_max") == 3
    assert stack.metric("draft", "lanes_worker_partition_pauses_total") >= 1
    assert stack.metric("draft", "lanes_worker_partition_resumes_total") >= 1
    completed = [
        e
        for e in await _events(stack.settings, stack.topics.renders)
        if isinstance(e, RenderCompleted)
    ]
    assert len(completed) == 30
    assert max(e.timings.batch_size for e in completed) > 1
    assert all(e.timings.batch_size <= 3 for e in completed)
    # The per-lane metrics an SRE pages on are all there.
    assert stack.metric("draft", "lanes_worker_jobs_total", outcome="ok") == 30
    assert stack.metric("draft", "lanes_worker_batch_size_count") < 30  # fewer calls than jobs
    assert stack.metric("draft", "lanes_worker_end_to_end_seconds_count") == 30
    assert stack.metric("draft", "lanes_worker_peak_memory_bytes", device="cpu") > 0
    assert stack.metric("draft", "lanes_worker_in_flight") == 0
    # Renders and PNG encoding run at a lower CPU priority than the worker's event loop
    # (Linux schedules threads one by one), so a saturated CPU serves Kafka I/O first.
    if sys.platform.startswith("linux"):
        loop = asyncio.get_running_loop()
        for pool in (worker.process.gpu, worker.process.codec):
            nice = await loop.run_in_executor(pool, _thread_nice)
            assert nice == min(19, _thread_nice() + stack.settings.worker.compute_thread_nice)


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_start_up_profile_caps_batches_where_batching_does_not_pay(
    settings: Settings, tmp_path: Path
) -> None:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={
            "max_concurrency": 4,
            "max_batch": 4,
            "max_wait_ms": 200,
            "sample_steps": 2,
            "width": 128,
            "height": 128,
        },
    )
    async with running_stack(settings, routes_file=routes, batch_calibration=True) as stack:
        await stack.wait_workers_ready()
        await wait_until(
            lambda: stack.metric("draft", "lanes_worker_batch_cap") > 0,
            timeout=30,
            what="batch cap exported",
        )
        # The profile the worker measured at start-up, and the cap it chose from it: sizes
        # 1 and 2 always; 4 only if 2 paid (the profile stops at the first size that does
        # not, which on a loaded CPU may be 2).
        timed = {
            b: stack.metric("draft", "lanes_worker_batch_seconds_per_image", batch=str(b))
            for b in (1, 2, 4)
        }
        per_image = {b: t for b, t in timed.items() if t > 0}
        assert {1, 2} <= set(per_image), timed
        cap = int(stack.metric("draft", "lanes_worker_batch_cap"))
        assert cap == choose_batch_cap(per_image)
        jobs = await _submit_many(stack.settings, 12)
        assert {d["status"] for d in await _wait_all(stack, jobs)} == {"succeeded"}
        completed = [
            e
            for e in await _events(stack.settings, stack.topics.renders)
            if isinstance(e, RenderCompleted)
        ]
        assert len(completed) == 12 and max(e.timings.batch_size for e in completed) <= cap


async def test_redelivered_request_yields_one_terminal_result(
    stack: Stack, receiver: WebhookReceiver
) -> None:
    skipped_before = stack.metric("draft", "lanes_worker_duplicates_skipped_total")
    spec = GenerationSpec(prompt="a lamp", webhook_url=receiver.url)
    event = GenerationRequested(job_id="job_redelivered", spec=spec)
    for _ in range(3):  # the same event, as a redelivery would bring it
        await produce_raw(
            stack.settings, stack.topics.requests, event.to_bytes(), event.job_id.encode()
        )
    await stack.wait_for_status(event.job_id, {"succeeded"})
    await receiver.wait_for(1)
    # Once more after the job ended.
    await produce_raw(
        stack.settings, stack.topics.requests, event.to_bytes(), event.job_id.encode()
    )
    await wait_until(
        lambda: (
            stack.metric("draft", "lanes_worker_duplicates_skipped_total") - skipped_before >= 3
        ),
        timeout=30,
        what="duplicates skipped",
    )
    renders = await _events(stack.settings, stack.topics.renders)
    assert sum(isinstance(e, RenderCompleted) and e.job_id == event.job_id for e in renders) == 1
    states = [
        JobState.model_validate_json(r.value)
        for r in await read_topic(stack.settings, stack.topics.jobs)
        if r.key == event.job_id.encode()
    ]
    assert sum(s.status == "succeeded" for s in states) == 1
    assert len(receiver.deliveries) == 1


async def test_batch_over_memory_budget_is_split(settings: Settings, tmp_path: Path) -> None:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={
            "max_concurrency": 2,
            "max_batch": 2,
            "max_wait_ms": 1500,
            "sample_steps": 1,
            "width": 256,
            "height": 256,
        },
    )
    # Weights ~8 MB; one 256x256 image ~100 MB of activations, two ~200 MB.
    async with running_stack(settings, routes_file=routes, memory_budget_gb=0.15) as stack:
        jobs = await _submit_many(stack.settings, 2)
        done = await _wait_all(stack, jobs)
        assert [(d["status"], d["lane"]) for d in done] == [("succeeded", "draft")] * 2
        assert stack.metric("draft", "lanes_worker_oom_total") >= 1
        completed = [
            e
            for e in await _events(stack.settings, stack.topics.renders)
            if isinstance(e, RenderCompleted)
        ]
        assert [e.timings.batch_size for e in completed] == [1, 1]


async def test_job_that_never_fits_goes_to_fallback_lane_with_reason(
    settings: Settings, tmp_path: Path
) -> None:
    routes = write_routes(
        tmp_path / "routes.yaml",
        draft={
            "max_concurrency": 2,
            "sample_steps": 2,
            "width": 256,
            "height": 256,
            "fallback_lane": "fallback",
        },
        fallback={"max_concurrency": 1, "sample_steps": 1, "width": 128, "height": 128},
    )
    async with running_stack(settings, routes_file=routes, memory_budget_gb=0.06) as stack:
        (job,) = await _submit_many(stack.settings, 1)
        done = await stack.wait_for_status(job, {"succeeded", "failed"})
        assert done["status"] == "succeeded" and done["lane"] == "fallback"
        assert done["attempt"] == 2
        assert "out of memory on lane draft" in done["reroutes"][0]
        assert (done["artifacts"][0]["width"], done["artifacts"][0]["attempt"]) == (128, 2)
        assert stack.metric("draft", "lanes_worker_oom_total") >= 1
        stack.check_alive()  # the worker did not die of it


# ---- worker processes: kill -9 and SIGTERM --------------------------------------------

SLOW_DRAFT = {"max_concurrency": 2, "max_batch": 1, "sample_steps": 40, "width": 256, "height": 256}


def _spawn_worker(
    settings: Settings, lane: str = "draft", stderr: Any = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    env = child_env(
        settings, os.environ, LANES_KAFKA_SESSION_TIMEOUT_MS="6000", LANES_DRAIN_TIMEOUT_S="60"
    )
    (worker,) = [w for w in workers(load_routes(settings.routes_file)) if w.lane == lane]
    return subprocess.Popen(
        command(worker),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    await wait_until(lambda: proc.poll() is not None, timeout=timeout, what="worker exit")
    return proc.returncode


@pytest.fixture
async def process_stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    routes = write_routes(tmp_path / "routes.yaml", draft=SLOW_DRAFT)
    async with running_stack(settings, routes_file=routes, worker_lanes=[]) as stack:
        yield stack


async def _started_events(stack: Stack) -> list[RenderStarted]:
    """The render.started events so far: up to the topic's end now (a render in progress
    keeps publishing progress, so the topic never goes quiet while it runs)."""
    return [
        e
        for e in (
            parse_job_event(r.value) for r in await read_topic(stack.settings, stack.topics.renders)
        )
        if isinstance(e, RenderStarted)
    ]


async def test_kill_9_mid_render_another_worker_finishes_one_webhook(
    process_stack: Stack, receiver: WebhookReceiver
) -> None:
    """A worker process killed with -9 mid-render; another worker (started in this process
    once the victim is gone: one torch import fewer) takes its partitions after the victim's
    session expires and finishes the job; the client gets one webhook."""
    stack = process_stack
    victim = _spawn_worker(stack.settings)
    try:
        job = await stack.submit({"prompt": "a poster", "webhook_url": receiver.url})
        started: list[RenderStarted] = []

        async def render_started() -> bool:
            started[:] = await _started_events(stack)
            return bool(started)

        await wait_until(render_started, timeout=90, what="render started")
        assert int(started[0].instance.split("-")[-2]) == victim.pid
        victim.send_signal(signal.SIGKILL)
        await _wait_exit(victim, 10)
        stack.start_worker("draft")

        done = await stack.wait_for_status(job, {"succeeded", "failed"}, timeout=120)
        assert done["status"] == "succeeded"
        completed = [
            e
            for e in await _events(stack.settings, stack.topics.renders)
            if isinstance(e, RenderCompleted)
        ]
        assert str(os.getpid()) in [e.instance.split("-")[-2] for e in completed]
        await receiver.wait_for(1)
        await asyncio.sleep(3)
        assert len(receiver.deliveries) == 1
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


async def test_sigterm_drains_in_flight_commits_and_exits_0(process_stack: Stack) -> None:
    stack = process_stack
    worker = _spawn_worker(stack.settings)
    try:
        jobs = [await stack.submit({"prompt": f"a hat {i}"}) for i in range(2)]
        await wait_until(lambda: _started_events(stack), timeout=90, what="render started")
        worker.send_signal(signal.SIGTERM)
        code = await _wait_exit(worker, 90)
        assert code == 0, worker.stderr.read().decode()[-3000:] if worker.stderr else ""
        stderr = worker.stderr.read().decode() if worker.stderr else ""
        assert "worker_draining" in stderr
        completed = [
            e
            for e in await _events(stack.settings, stack.topics.renders)
            if isinstance(e, RenderCompleted)
        ]
        assert {e.job_id for e in completed} == set(jobs)  # both held jobs finished before exit
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # It committed every job it took before it exited: a worker that joins the group next
    # starts after them, so no job renders twice.
    lags = LagMonitor(stack.settings, ["draft"], every_s=1.0)
    try:
        assert await lags.poll() == {"draft": 0}
    finally:
        await lags.close()
    assert Counter(e.job_id for e in completed) == Counter(jobs)  # each rendered once
    done = await _wait_all(stack, jobs)
    assert {d["status"] for d in done} == {"succeeded"}

    # Stopped while it loads its models, a worker holds nothing yet: it exits at once with
    # 0, not after a load it will not use (a rolling restart, `lanes up` stopped early).
    log = stack.settings.storage.state_dir / f"starting-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as sink:
        starting = _spawn_worker(stack.settings, stderr=sink)
    try:
        await wait_until(
            lambda: "worker_starting" in log.read_text(errors="replace"),
            timeout=60,
            what="the worker starting",
        )
        starting.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await _wait_exit(starting, 30) == 0, log.read_text()[-3000:]
        took = time.monotonic() - sent
        text = log.read_text(errors="replace")
        assert "worker_stopped_while_starting" in text and "worker_ready" not in text, text[-3000:]
        assert took < 5, f"a starting worker took {took:.1f} s to stop"
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.wait()
