"""Lane worker [group lanes-lane-<lane>]: renders routed jobs with a diffusers pipeline.

One process per GPU. The pipeline is loaded once at start; inference runs on a dedicated
thread so the event loop keeps heartbeating and committing during long renders.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from consumers.exceptions import PoisonEvent
from consumers.loop import MessageContext, Output
from consumers.runtime import run_consumer
from schemas.events import (
    GenerationRouted,
    RenderCompleted,
    RenderFailed,
    RenderStarted,
    Timings,
    parse_job_event,
)
from schemas.topics import Topics
from services.artifacts import LocalArtifactStore
from services.engines.diffusion import DiffusionEngine, RenderRequest
from services.routes import checkpoint_dir, load_routes
from services.settings import Settings

__all__ = ["run", "LaneWorker", "WorkerMetrics"]

log = structlog.get_logger("lanes.worker")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.2, 1.5, 2, 3, 5, 10, 30, 60)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["lane", "model", "version"]
        self.jobs = Counter("lanes_worker_jobs_total", "Jobs rendered", labels + ["outcome"],
                            registry=registry)
        self.inference = Histogram("lanes_worker_inference_seconds", "Pipeline time per job",
                                   labels, registry=registry, buckets=LATENCY_BUCKETS)
        self.queue_wait = Histogram("lanes_worker_queue_wait_seconds",
                                    "Request accepted to render start", labels,
                                    registry=registry, buckets=LATENCY_BUCKETS)
        self.end_to_end = Histogram("lanes_worker_end_to_end_seconds",
                                    "Request accepted to render stored", labels,
                                    registry=registry, buckets=LATENCY_BUCKETS)


class LaneWorker:
    def __init__(
        self,
        lane: str,
        engine: DiffusionEngine,
        store: LocalArtifactStore,
        topics: Topics,
        metrics: WorkerMetrics,
        instance: str,
    ) -> None:
        self.lane = lane
        self.engine = engine
        self.store = store
        self.topics = topics
        self.metrics = metrics
        self.instance = instance
        # One inference thread per GPU: a pipeline is not safe to call concurrently.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{lane}")

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    async def handle(self, event: object, ctx: MessageContext) -> Sequence[Output]:
        if not isinstance(event, GenerationRouted):
            raise PoisonEvent(f"lane worker expects generation.routed, got {getattr(event, 'type', '?')}")
        labels = (self.lane, event.model, event.version)
        common = dict(job_id=event.job_id, producer=f"lanes-worker-{self.lane}",
                      lane=self.lane, attempt=event.attempt)
        started_at = datetime.now(UTC)
        queue_wait_s = max(0.0, (started_at - event.requested_at).total_seconds())
        await ctx.publish(Output(self.topics.renders, event.job_id, RenderStarted(
            model=event.model, version=event.version, instance=self.instance, **common,
        ).to_bytes()))
        request = RenderRequest(
            prompt=event.spec.prompt, width=event.width, height=event.height,
            steps=event.sample_steps, guidance_scale=event.guidance_scale, seed=event.seed,
        )
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.executor, self.engine.render, request)
            stage = "final" if event.spec.intent == "final" else "draft"
            uri = await loop.run_in_executor(
                None, self.store.put_png, event.job_id, f"{stage}-a{event.attempt}", result.image
            )
        except ValueError as exc:  # check_inputs: the request can never render
            self.metrics.jobs.labels(*labels, "failed").inc()
            log.warning("render_rejected", error=str(exc))
            return [Output(self.topics.renders, event.job_id,
                           RenderFailed(error=str(exc), **common).to_bytes())]
        total_s = (datetime.now(UTC) - event.requested_at).total_seconds()
        self.metrics.jobs.labels(*labels, "ok").inc()
        self.metrics.queue_wait.labels(*labels).observe(queue_wait_s)
        self.metrics.inference.labels(*labels).observe(result.inference_ms / 1000)
        self.metrics.end_to_end.labels(*labels).observe(total_s)
        done = RenderCompleted(
            stage=stage, model=event.model, version=event.version, instance=self.instance,
            artifact_uri=uri, width=result.image.width, height=result.image.height,
            seed=event.seed, sample_steps=event.sample_steps,
            expected_text=event.spec.expected_text,
            timings=Timings(queue_wait_ms=queue_wait_s * 1000, inference_ms=result.inference_ms,
                            total_ms=total_s * 1000),
            **common,
        )
        log.info("render_completed", inference_ms=round(result.inference_ms, 1), uri=uri)
        return [Output(self.topics.renders, event.job_id, done.to_bytes())]


# diffusers' lazy imports are not thread-safe: loads in one process go one at a time.
_LOAD_LOCK = threading.Lock()


def load_engine(settings: Settings, lane: str) -> DiffusionEngine:
    routes = load_routes(settings.routes_file)
    if lane not in routes.lanes:
        raise SystemExit(f"lane {lane!r} is not in the routes file (lanes: {sorted(routes.lanes)})")
    model_name = routes.lanes[lane].model
    spec = routes.models[model_name]
    with _LOAD_LOCK:
        path = checkpoint_dir(model_name, spec, settings.models_path)
        return DiffusionEngine.load(path, name=model_name, version=spec.version, device=settings.device)


async def run(
    settings: Settings,
    lane: str,
    stop: asyncio.Event | None = None,
    engine: DiffusionEngine | None = None,
) -> None:
    topics = Topics(settings.topic_prefix)
    registry = CollectorRegistry()
    started = time.perf_counter()
    if engine is None:
        engine = await asyncio.to_thread(load_engine, settings, lane)
    log.info("engine_loaded", lane=lane, model=engine.name, version=engine.version,
             device=engine.device, load_s=round(time.perf_counter() - started, 2))
    worker = LaneWorker(
        lane, engine, LocalArtifactStore(settings.artifacts_path), topics,
        WorkerMetrics(registry), instance=f"{socket.gethostname()}-{os.getpid()}-{lane}",
    )
    try:
        await run_consumer(
            settings, name=f"lane-{lane}", topics=[topics.lane(lane)], parse=parse_job_event,
            handler=worker.handle, registry=registry, stop=stop, max_records=1,
        )
    finally:
        worker.close()
