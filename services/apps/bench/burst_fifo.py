"""The baseline arm of the burst benchmark: one FIFO queue in front of the same engines."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from services.apps.bench.burst_plan import BurstConfig, JobResult
from services.apps.bench.models import models_cache

__all__ = ["run_fifo", "calibrate"]


async def run_fifo(
    settings: Any, cfg: BurstConfig, plan: list[tuple[float, str]]
) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from consumers.lane_worker.models import load_routes_model
    from services.config.routes import load_routes
    from services.engines.batching import on_this_device
    from services.engines.diffusion import RenderRequest
    from services.engines.memory import OutOfMemory
    from services.process.tuning import freeze_startup_heap
    from services.storage.artifacts import LocalArtifactStore

    routes = load_routes(settings.routes_file)
    store = LocalArtifactStore(settings.artifacts_path)
    engines = [
        on_this_device(await asyncio.to_thread(load_routes_model, settings, "draft", routes))
        for _ in range(cfg.workers)
    ]
    pools = [ThreadPoolExecutor(max_workers=1) for _ in engines]
    loop = asyncio.get_running_loop()
    for engine, pool in zip(engines, pools, strict=True):
        for lane in ("draft", "final"):
            s = routes.lanes[lane]
            await loop.run_in_executor(
                pool,
                engine.render_batch,
                [RenderRequest("warm up", s.width, s.height, s.sample_steps, s.guidance_scale, 0)],
            )
    queue: asyncio.Queue[tuple[JobResult, float]] = asyncio.Queue()
    results: list[JobResult] = []
    counters = {"ooms": 0, "crashes": 0}

    async def worker(engine: Any, pool: ThreadPoolExecutor, name: str) -> None:
        while True:
            job, enqueued = await queue.get()
            spec = routes.lanes[job.intent]
            req = RenderRequest(
                f"a {job.intent} product photo",
                spec.width,
                spec.height,
                spec.sample_steps,
                spec.guidance_scale,
                1,
            )
            started = time.time()
            try:
                (out,) = await loop.run_in_executor(pool, engine.render_batch, [req])
                stored = time.perf_counter()
                await loop.run_in_executor(None, store.put_png, job.job_id, job.intent, out.image)
                job.store_ms = (time.perf_counter() - stored) * 1000
                job.done, job.inference_ms = time.time(), out.inference_ms
                job.gpu_wait_s = started - enqueued
                job.started_at, job.worker = started, name
            except OutOfMemory:
                counters["ooms"] += 1
            finally:
                queue.task_done()

    tasks = [
        asyncio.create_task(worker(e, p, f"fifo-{i}"))
        for i, (e, p) in enumerate(zip(engines, pools, strict=True))
    ]
    freeze_startup_heap()  # as the Lanes run does before its clock
    t0 = time.monotonic()
    for offset, intent in plan:
        await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
        job = JobResult(f"job_{uuid.uuid4().hex}", intent, time.time())
        results.append(job)
        queue.put_nowait((job, time.time()))
    await asyncio.wait_for(queue.join(), 600)
    for t in tasks:
        t.cancel()
    return {"jobs": [asdict(r) for r in results], **counters}


def calibrate(cfg: BurstConfig, workdir: Path) -> dict[str, float]:
    """Seconds per job, per intent, one at a time on one engine (sets the steady rate)."""
    import torch

    from consumers.lane_worker.models import load_routes_model
    from services.config.routes import load_routes
    from services.config.settings import Settings
    from services.engines.batching import on_this_device
    from services.engines.diffusion import RenderRequest

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    settings = Settings(
        state_dir=workdir / "state",
        routes_file=workdir / "routes.yaml",
        device=cfg.device,
        models_dir=models_cache(),
    )
    routes = load_routes(settings.routes_file)
    engine = on_this_device(load_routes_model(settings, "draft", routes))

    def seconds_per_image(lane: str, batch: int) -> float:
        s = routes.lanes[lane]
        reqs = [
            RenderRequest("calibrate", s.width, s.height, s.sample_steps, s.guidance_scale, i)
            for i in range(batch)
        ]
        engine.render_batch(reqs)  # warm-up
        started = time.perf_counter()
        for _ in range(3):
            engine.render_batch(reqs)
        return (time.perf_counter() - started) / 3 / batch

    return {
        "draft": seconds_per_image("draft", 1),
        "final": seconds_per_image("final", 1),
        # what batching buys on this device
        "draft_batched": seconds_per_image("draft", cfg.draft_batch),
    }
