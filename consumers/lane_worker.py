"""Lane worker [group lanes-lane-<lane>]: renders routed jobs, one process per GPU.

- Backpressure: at most the lane's ``max_concurrency`` jobs are held at once. When full,
  the worker pauses its partitions and resumes when a slot frees; fetches ask only for as
  many records as there are free slots, so a burst waits in Kafka, not in memory.
- Micro-batching: jobs that share size, steps and guidance render in one pipeline call, up
  to ``max_batch`` after at most ``max_wait_ms``.
- Inference runs on one dedicated thread (the GPU's), never on the event loop.
- Commit after ack: a job's offset is committed once its output is acknowledged and every
  earlier offset of its partition is done (``OffsetTracker``).
- Idempotency: a redelivered job (same id and attempt) that is in flight, was rendered here,
  or is already finished in ``lanes.jobs`` is skipped.
- Out of memory (CUDA OOM or a budget refusal): free the cache, split the batch, and send a
  job that does not fit alone to the lane's fallback lane with the reason.
- SIGTERM: stop fetching, finish in-flight jobs within ``drain_timeout_s``, commit, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError
from prometheus_client import CollectorRegistry

from consumers.batcher import MicroBatcher
from consumers.loop import Output, bind_record, dead_letter
from consumers.offsets import OffsetTracker
from consumers.runtime import stop_on_signals
from consumers.worker_metrics import WorkerMetrics
from schemas.events import (
    GenerationRouted,
    RenderCompleted,
    RenderFailed,
    RenderRerouted,
    RenderStarted,
    Timings,
    parse_job_event,
)
from schemas.records import JobState
from schemas.topics import Topics
from services.artifacts import ArtifactError, LocalArtifactStore
from services.compacted_view import CompactedView
from services.engines.diffusion import DiffusionEngine, RenderOutput, RenderRequest, batch_key
from services.engines.memory import (
    MemoryBudget,
    OutOfMemory,
    free_cached_memory,
    peak_memory_bytes,
)
from services.kafka_clients import make_consumer, make_producer
from services.observability import serve_ops
from services.routes import LaneSpec, Routes, checkpoint_dir, load_routes
from services.settings import Settings

__all__ = ["run", "LaneWorker", "RenderTask", "load_engine"]

log = structlog.get_logger("lanes.worker")

RECENT_LIMIT = 10_000


@dataclass
class RenderTask:
    tp: TopicPartition
    offset: int
    event: GenerationRouted
    request: RenderRequest
    fetched_at: datetime


class LaneWorker(ConsumerRebalanceListener):
    def __init__(
        self,
        settings: Settings,
        lane: str,
        routes: Routes,
        engine: DiffusionEngine,
        registry: CollectorRegistry,
        *,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.lane = lane
        self.spec: LaneSpec = routes.lanes[lane]
        self.routes = routes
        self.engine = engine
        self.topics = Topics(settings.topic_prefix)
        self.store = LocalArtifactStore(settings.artifacts_path)
        self.registry = registry
        self.metrics = WorkerMetrics(registry)
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{lane}"
        self.group = settings.group(f"lanes-lane-{lane}")
        self.labels = (lane, engine.name, engine.version)
        self.cap = self.spec.max_concurrency
        self.metrics.capacity.labels(*self.labels).set(self.cap)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.tracker = OffsetTracker()
        self.batcher: MicroBatcher[RenderTask] = MicroBatcher(
            self.spec.max_batch, self.spec.max_wait_ms / 1000
        )
        self.jobs_view: CompactedView[JobState] = CompactedView(
            settings, self.topics.jobs, JobState.model_validate_json
        )
        # (job id, attempt) held now or rendered recently by this worker.
        self.holding: set[tuple[str, int, bool]] = set()
        self.recent: OrderedDict[tuple[str, int, bool], None] = OrderedDict()
        self.in_flight = 0
        self.max_in_flight = 0
        self.paused = False
        self.slot_freed = asyncio.Event()
        self.finishing: set[asyncio.Task[None]] = set()
        self.commit_lock = asyncio.Lock()
        self.ready = False
        self.fatal: Exception | None = None
        # One inference thread: one GPU runs one batch at a time.
        self.gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gpu-{lane}")

    # ---- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.producer = make_producer(self.settings, client_id=f"lanes-worker-{self.lane}")
        self.consumer = make_consumer(
            self.settings, group=self.group, client_id=f"lanes-worker-{self.lane}",
            max_partition_fetch_bytes=256 * 1024,
        )
        self.consumer.subscribe([self.topics.lane(self.lane)], listener=self)
        await self.producer.start()
        tasks: list[asyncio.Task[Any]] = []
        try:
            await self.consumer.start()
            tasks = [
                asyncio.create_task(self.jobs_view.follow(), name="jobs-view"),
                asyncio.create_task(self._gpu_loop(), name="gpu-loop"),
                asyncio.create_task(serve_ops(self.settings.metrics_host, self.settings.metrics_port,
                                              self.registry, lambda: self.ready)),
            ]
            log.info("worker_started", lane=self.lane, cap=self.cap, max_batch=self.spec.max_batch,
                     instance=self.instance, device=self.engine.device)
            await self._fetch_loop(stop, tasks)
            await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.consumer.stop()
            await self.producer.stop()
            self.gpu.shutdown(wait=False, cancel_futures=True)
            log.info("worker_stopped", lane=self.lane, in_flight=self.in_flight)

    async def _fetch_loop(self, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
        assert self.consumer is not None
        last_lag = 0.0
        while not stop.is_set():
            if self.fatal is not None:
                raise RuntimeError("worker stopped: an outcome could not be published") from self.fatal
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if time.monotonic() - last_lag > 1.0:
                last_lag = time.monotonic()
                await self._update_lag()
            free = self.cap - self.in_flight
            if free <= 0:
                self._pause()
                self.slot_freed.clear()
                try:
                    await asyncio.wait_for(self.slot_freed.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            self._resume()
            batches = await self.consumer.getmany(timeout_ms=100, max_records=free)
            self.ready = True
            for tp, records in batches.items():
                for record in records:
                    await self._admit(tp, record)

    async def _drain(self) -> None:
        """Stop fetching; finish what is held within the deadline; commit."""
        self._pause()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        log.info("worker_draining", in_flight=self.in_flight, deadline_s=self.settings.drain_timeout_s)
        while self.in_flight > 0 and time.monotonic() < deadline:
            self.slot_freed.clear()
            try:
                await asyncio.wait_for(self.slot_freed.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
        if self.finishing:
            await asyncio.wait(self.finishing, timeout=max(0.1, deadline - time.monotonic()))
        await self._commit()
        if self.in_flight:
            log.warning("worker_drain_deadline", abandoned=self.in_flight)

    # ---- backpressure ------------------------------------------------------------------

    def _pause(self) -> None:
        assert self.consumer is not None
        if not self.paused:
            self.consumer.pause(*self.consumer.assignment())
            self.paused = True
            self.metrics.pauses.labels(*self.labels).inc()

    def _resume(self) -> None:
        assert self.consumer is not None
        if self.paused:
            self.consumer.resume(*self.consumer.paused())
            self.paused = False
            self.metrics.resumes.labels(*self.labels).inc()

    def _hold(self, delta: int) -> None:
        self.in_flight += delta
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.metrics.in_flight.labels(*self.labels).set(self.in_flight)
        self.metrics.in_flight_max.labels(*self.labels).set(self.max_in_flight)
        if delta < 0:
            self.slot_freed.set()

    async def _update_lag(self) -> None:
        assert self.consumer is not None
        lag = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                try:
                    lag += max(0, high - await self.consumer.position(tp))
                except IllegalStateError:
                    pass
        self.metrics.lag.labels(*self.labels).set(lag)

    # ---- admission ---------------------------------------------------------------------

    def stage_of(self, event: GenerationRouted) -> Literal["draft", "final", "upscaled"]:
        """A refine pass makes the upscaled image; the first render of a cascade is a draft."""
        if event.init_artifact_uri is not None:
            return "upscaled"
        if self.spec.cascade is not None or event.spec.intent == "draft":
            return "draft"
        return "final"

    def _already_done(self, event: GenerationRouted) -> bool:
        key = _task_key(event)
        if key in self.holding or key in self.recent:
            return True
        job = self.jobs_view.items.get(event.job_id)
        if job is None:
            return False
        return job.terminal or job.attempt > event.attempt or any(
            a.attempt == event.attempt and a.stage == self.stage_of(event) for a in job.artifacts
        )

    async def _admit(self, tp: TopicPartition, record: Any) -> None:
        bind_record(record, self.group)
        self.tracker.add(tp, record.offset)
        try:
            event = parse_job_event(record.value or b"")
            if not isinstance(event, GenerationRouted):
                raise ValueError(f"lane worker expects generation.routed, got {event.type}")
        except Exception as exc:  # noqa: BLE001 - a bad record goes to the DLQ
            log.warning("event_dead_lettered", error=str(exc)[:300])
            await self._send([dead_letter(record, exc, self.group, self.topics.dlq)])
            self.tracker.done(tp, record.offset)
            await self._commit()
            return
        if self._already_done(event):
            log.info("duplicate_skipped", attempt=event.attempt)
            self.metrics.duplicates.labels(*self.labels).inc()
            self.tracker.done(tp, record.offset)
            await self._commit()
            return
        init_image = None
        if event.init_artifact_uri is not None:
            try:
                init_image = await asyncio.get_running_loop().run_in_executor(
                    None, self.store.open_image, event.init_artifact_uri)
            except ArtifactError as exc:  # the job fails with the reason; never stuck
                log.warning("init_artifact_unreadable", error=str(exc))
                self.metrics.failures.labels(*self.labels, "unreadable_artifact").inc()
                await self._send([Output(self.topics.renders, event.job_id, RenderFailed(
                    job_id=event.job_id, producer=f"lanes-worker-{self.lane}", lane=self.lane,
                    attempt=event.attempt, error=f"cannot refine: {exc}").to_bytes())])
                self.tracker.done(tp, record.offset)
                await self._commit()
                return
        request = RenderRequest(
            prompt=event.spec.prompt, width=event.width, height=event.height,
            steps=event.sample_steps, guidance_scale=event.guidance_scale, seed=event.seed,
            init_image=init_image, strength=event.strength,
        )
        self.holding.add(_task_key(event))
        self._hold(+1)
        self.batcher.put(batch_key(request), RenderTask(tp, record.offset, event, request,
                                                        datetime.now(UTC)))

    # ---- rendering ---------------------------------------------------------------------

    async def _gpu_loop(self) -> None:
        while True:
            batch = await self.batcher.next_batch()
            started_at = datetime.now(UTC)
            # Progress events are not waited for here (the render starts at once); _finish
            # awaits their acks before it publishes the outcome.
            started = await self._enqueue([Output(self.topics.renders, t.event.job_id, RenderStarted(
                job_id=t.event.job_id, producer=f"lanes-worker-{self.lane}", lane=self.lane,
                model=t.event.model, version=t.event.version, instance=self.instance,
                attempt=t.event.attempt).to_bytes()) for t in batch])
            results = await self._render_fitting(batch)
            task = asyncio.create_task(self._finish(results, started_at, started))
            self.finishing.add(task)
            task.add_done_callback(self.finishing.discard)

    async def _render_fitting(
        self, batch: list[RenderTask]
    ) -> list[tuple[RenderTask, RenderOutput | Exception]]:
        """Render, splitting the batch on out-of-memory; a job that does not fit alone gets
        its OutOfMemory back."""
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(
                self.gpu, self.engine.render_batch, [t.request for t in batch]
            )
            self.metrics.batch_size.labels(*self.labels).observe(len(batch))
            self.metrics.inference.labels(*self.labels).observe(outputs[0].inference_ms / 1000)
            return list(zip(batch, outputs))
        except OutOfMemory as exc:
            self.metrics.ooms.labels(*self.labels).inc()
            await loop.run_in_executor(self.gpu, free_cached_memory)
            log.warning("out_of_memory", batch=len(batch), error=str(exc)[:300])
            if len(batch) == 1:
                return [(batch[0], exc)]
            half = len(batch) // 2
            return await self._render_fitting(batch[:half]) + await self._render_fitting(batch[half:])
        except ValueError as exc:  # check_inputs: these requests can never render
            return [(t, exc) for t in batch]
        finally:
            self.metrics.peak_memory.labels(*self.labels, self.engine.device).set(
                peak_memory_bytes(self.engine.device)
            )

    async def _finish(self, results: list[tuple[RenderTask, RenderOutput | Exception]],
                      started_at: datetime, pending: list[asyncio.Future[Any]]) -> None:
        """Store and publish each job's outcome as soon as it is ready, then commit.

        A publish that fails after the producer's own retries is fatal: the worker stops
        with its offsets uncommitted, so the jobs are redelivered to a healthy member.
        """
        try:
            await asyncio.gather(*pending)
            await asyncio.gather(*(self._publish_outcome(t, r, started_at) for t, r in results))
        except Exception as exc:  # noqa: BLE001
            log.error("publish_failed", error=str(exc)[:500])
            self.fatal = exc
            self.slot_freed.set()
            return
        for task, _ in results:
            self.tracker.done(task.tp, task.offset)
            self._release(task, rendered=True)
        await self._commit()

    async def _publish_outcome(self, task: RenderTask, result: RenderOutput | Exception,
                               started_at: datetime) -> None:
        if isinstance(result, Exception):
            await self._send(self._unrendered(task, result))
            return
        stored = time.perf_counter()
        uri = await asyncio.get_running_loop().run_in_executor(
            None, self.store.put_png, task.event.job_id,
            f"{self.stage_of(task.event)}-a{task.event.attempt}", result.image,
        )
        store_ms = (time.perf_counter() - stored) * 1000
        outputs = [self._completed(task, result, uri, started_at, store_ms)]
        if self.spec.cascade is not None and task.event.init_artifact_uri is None:
            outputs.append(self._cascade(task.event, uri))
        await self._send(outputs)

    def _cascade(self, e: GenerationRouted, draft_uri: str) -> Output:
        """The refine/upscale pass of a cascade route, on its own lane and queue."""
        assert self.spec.cascade is not None
        target = self.routes.lanes[self.spec.cascade.lane]
        routed = GenerationRouted(
            job_id=e.job_id, producer=f"lanes-worker-{self.lane}", spec=e.spec, attempt=e.attempt,
            lane=self.spec.cascade.lane, model=target.model,
            version=self.routes.models[target.model].version, sample_steps=target.sample_steps,
            guidance_scale=target.guidance_scale, width=self.spec.cascade.width,
            height=self.spec.cascade.height, seed=e.seed, requested_at=e.requested_at,
            init_artifact_uri=draft_uri, strength=target.refine_strength,
        )
        return Output(self.topics.lane(self.spec.cascade.lane), e.job_id, routed.to_bytes())

    def _release(self, task: RenderTask, rendered: bool = False) -> None:
        key = _task_key(task.event)
        self.holding.discard(key)
        if rendered:
            self.recent[key] = None
            while len(self.recent) > RECENT_LIMIT:
                self.recent.popitem(last=False)
        self._hold(-1)

    def _completed(self, task: RenderTask, result: RenderOutput, uri: str,
                   started_at: datetime, store_ms: float) -> Output:
        e = task.event
        now = datetime.now(UTC)
        queue_wait = max(0.0, (started_at - e.requested_at).total_seconds())
        total = (now - e.requested_at).total_seconds()
        self.metrics.jobs.labels(*self.labels, "ok").inc()
        self.metrics.queue_wait.labels(*self.labels).observe(queue_wait)
        self.metrics.end_to_end.labels(*self.labels).observe(total)
        done = RenderCompleted(
            job_id=e.job_id, producer=f"lanes-worker-{self.lane}", lane=self.lane, attempt=e.attempt,
            stage=self.stage_of(e), model=e.model, spec=e.spec, requested_at=e.requested_at,
            next_stage="upscale" if self.spec.cascade and e.init_artifact_uri is None else None,
            version=e.version, instance=self.instance, artifact_uri=uri,
            width=result.image.width, height=result.image.height, seed=e.seed,
            sample_steps=e.sample_steps, expected_text=e.spec.expected_text,
            timings=Timings(
                queue_wait_ms=queue_wait * 1000, inference_ms=result.inference_ms,
                total_ms=total * 1000, batch_size=result.batch_size, store_ms=store_ms,
                kafka_wait_ms=max(0.0, (task.fetched_at - e.requested_at).total_seconds() * 1000),
            ),
        )
        log.info("render_completed", job_id=e.job_id, batch=result.batch_size,
                 inference_ms=round(result.inference_ms, 1))
        return Output(self.topics.renders, e.job_id, done.to_bytes())

    def _unrendered(self, task: RenderTask, exc: Exception) -> list[Output]:
        e = task.event
        producer = f"lanes-worker-{self.lane}"
        fallback = self.spec.fallback_lane
        if isinstance(exc, OutOfMemory) and fallback and fallback != self.lane:
            target = self.routes.lanes[fallback]
            reason = f"out of memory on lane {self.lane}: {exc}"[:500]
            self.metrics.jobs.labels(*self.labels, "rerouted").inc()
            self.metrics.failures.labels(*self.labels, "oom_rerouted").inc()
            log.warning("job_rerouted", job_id=e.job_id, to_lane=fallback, reason=reason)
            routed = GenerationRouted(
                job_id=e.job_id, producer=producer, spec=e.spec, attempt=e.attempt + 1,
                lane=fallback, model=target.model, version=self.routes.models[target.model].version,
                sample_steps=target.sample_steps, guidance_scale=target.guidance_scale,
                width=target.width, height=target.height, seed=e.seed,
                requested_at=e.requested_at, reason=reason,
            )
            rerouted = RenderRerouted(job_id=e.job_id, producer=producer, lane=self.lane,
                                      to_lane=fallback, reason=reason, attempt=e.attempt + 1)
            # The reroute record first: the job view must know the new attempt is coming.
            return [Output(self.topics.renders, e.job_id, rerouted.to_bytes()),
                    Output(self.topics.lane(fallback), e.job_id, routed.to_bytes())]
        reason = "oom" if isinstance(exc, OutOfMemory) else "invalid"
        self.metrics.jobs.labels(*self.labels, "failed").inc()
        self.metrics.failures.labels(*self.labels, reason).inc()
        failed = RenderFailed(job_id=e.job_id, producer=producer, lane=self.lane,
                              attempt=e.attempt, error=str(exc)[:1000])
        return [Output(self.topics.renders, e.job_id, failed.to_bytes())]

    # ---- Kafka I/O ---------------------------------------------------------------------

    async def _enqueue(self, outputs: list[Output]) -> list[asyncio.Future[Any]]:
        """Hand outputs to the producer; the returned futures resolve on the broker's ack."""
        assert self.producer is not None
        return [
            await self.producer.send(o.topic, value=o.value,
                                     key=o.key.encode() if isinstance(o.key, str) else o.key)
            for o in outputs
        ]

    async def _send(self, outputs: list[Output]) -> None:
        futures = await self._enqueue(outputs)
        if futures:
            await asyncio.gather(*futures)

    async def _commit(self) -> None:
        assert self.consumer is not None
        async with self.commit_lock:
            assigned = self.consumer.assignment()
            points = {tp: off for tp, off in self.tracker.to_commit().items() if tp in assigned}
            if not points:
                return
            try:
                await self.consumer.commit(points)
                self.tracker.mark_committed(points)
            except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
                log.warning("commit_skipped", error=str(exc)[:300])

    # ---- rebalance ---------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Give held jobs of the revoked partitions a short while to finish and commit."""
        revoked = set(revoked)
        deadline = time.monotonic() + min(10.0, self.settings.drain_timeout_s)
        while self.tracker.pending(revoked) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._commit()
        self.tracker.forget(revoked)
        self.paused = False  # a new assignment starts unpaused

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))


def _task_key(event: GenerationRouted) -> tuple[str, int, bool]:
    return (event.job_id, event.attempt, event.init_artifact_uri is not None)


# diffusers' lazy imports are not thread-safe: loads in one process go one at a time.
_LOAD_LOCK = threading.Lock()


def load_engine(settings: Settings, lane: str, routes: Routes | None = None) -> DiffusionEngine:
    routes = routes or load_routes(settings.routes_file)
    if lane not in routes.lanes:
        raise SystemExit(f"lane {lane!r} is not in the routes file (lanes: {sorted(routes.lanes)})")
    model_name = routes.lanes[lane].model
    spec = routes.models[model_name]
    with _LOAD_LOCK:
        path = checkpoint_dir(model_name, spec, settings.models_path)
        return DiffusionEngine.load(
            path, name=model_name, version=spec.version, device=settings.device,
            budget=MemoryBudget.from_gb(settings.memory_budget_gb),
            compile_unet=settings.compile_unet,
            refine=routes.lanes[lane].refine_strength is not None,
        )


async def run(
    settings: Settings,
    lane: str,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
    on_ready: Any = None,
) -> None:
    stop = stop_on_signals(stop)
    routes = load_routes(settings.routes_file)
    started = time.perf_counter()
    engine = await asyncio.to_thread(load_engine, settings, lane, routes)
    log.info("engine_loaded", lane=lane, model=engine.name, version=engine.version,
             device=engine.device, load_s=round(time.perf_counter() - started, 2),
             footprint_mb=round(engine.footprint_bytes / 2**20, 1))
    worker = LaneWorker(settings, lane, routes, engine, registry or CollectorRegistry())
    if on_ready is not None:
        on_ready(worker)
    await worker.run(stop)
