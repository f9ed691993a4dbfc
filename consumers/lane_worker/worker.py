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
- Control: follows ``lanes.control`` for its lane (model versions, canary, cap, steps,
  pause, rolling restart; see ``consumers.lane_worker.models``) and reports its status on
  ``lanes.workers`` every ``heartbeat_s``. A rolling restart goes one instance at a time:
  an instance restarts (drain, leave the group, reload, rejoin) once every instance before
  it, in instance order, is back and ready.
- Spill: a worker of a lane that ``assists`` or ``backfills`` another also serves that
  lane's spill queue through a guest worker on the same GPU thread (``LaneWorker`` below,
  ``consumers.lane_worker.device_turns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError
from prometheus_client import CollectorRegistry

from consumers.lane_worker.batcher import MicroBatcher
from consumers.lane_worker.device_turns import DeviceTurns
from consumers.lane_worker.metrics import WorkerMetrics
from consumers.lane_worker.models import LaneModels
from consumers.machinery.loop import Output, bind_record, commit_or_skip, dead_letter, publish_all
from consumers.machinery.offsets import OffsetTracker
from consumers.machinery.runtime import stop_on_signals
from schemas.control import LaneDesired, WorkerHealth, WorkerStatus
from schemas.events import (
    GenerationRouted,
    RenderCanceled,
    RenderCompleted,
    RenderFailed,
    RenderRerouted,
    RenderStarted,
    Timings,
    parse_job_event,
)
from schemas.records import JobState
from schemas.topics import Topics
from services.config.routes import LaneSpec, Routes, load_routes
from services.config.settings import Settings
from services.domain.routing import Job, route
from services.engines.diffusion import (
    DiffusionEngine,
    Interrupted,
    RenderOutput,
    RenderRequest,
    batch_key,
)
from services.engines.memory import (
    OutOfMemory,
    free_cached_memory,
    peak_memory_bytes,
)
from services.kafka.clients import make_consumer, make_producer
from services.kafka.compacted_view import CompactedView
from services.kafka.lag_monitor import spill_group
from services.process.ops_server import serve_ops
from services.process.tuning import freeze_startup_heap, lower_thread_priority
from services.storage.artifacts import ArtifactError, LocalArtifactStore

__all__ = ["run", "LaneWorker", "RenderTask"]

log = structlog.get_logger("lanes.worker")

RECENT_LIMIT = 10_000


@dataclass
class RenderTask:
    tp: TopicPartition
    offset: int
    event: GenerationRouted
    request: RenderRequest
    fetched_at: datetime
    engine: DiffusionEngine  # chosen at admission: a version switch never splits a job


class LaneWorker(ConsumerRebalanceListener):
    """One lane's jobs on this process's GPU. A worker whose lane ``assists`` or
    ``backfills`` others carries a guest ``LaneWorker`` per such lane (``host`` set): the
    guest serves that lane's spill queue on the same GPU thread and shares the host's
    producer, views, metrics and /metrics port. Priority on the GPU: an assisted lane's
    guest (0), the host (1), a backfilled lane's guest (2). A more urgent worker's batches
    take the next turn and run between the steps of a less urgent render in progress, and
    while a more urgent worker holds jobs, a less urgent one takes no new ones (they wait in
    Kafka)."""

    def __init__(
        self,
        settings: Settings,
        lane: str,
        routes: Routes,
        models: LaneModels,
        registry: CollectorRegistry,
        *,
        instance: str | None = None,
        host: LaneWorker | None = None,
        priority: int = 1,
    ) -> None:
        self.settings = settings
        self.lane = lane
        self.spec: LaneSpec = routes.lanes[lane]
        self.routes = routes
        self.models = models
        self.topics = Topics(settings.topic_prefix)
        self.store = LocalArtifactStore(settings.artifacts_path)
        self.registry = registry
        self.host = host
        self.guests: list[LaneWorker] = []
        self.serves: Literal["lane", "spill"] = "lane" if host is None else "spill"
        if host is None:
            self.metrics = WorkerMetrics(registry)
            self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{lane}"
            self.group = settings.group(f"lanes-lane-{lane}")
            self.source = self.topics.lane(lane)
            self.device = DeviceTurns()
        else:
            self.metrics = host.metrics
            self.instance = f"{host.instance}+{lane}-spill"
            self.group = spill_group(settings, lane)
            self.source = self.topics.spill(lane)
            self.device = host.device
            host.guests.append(self)
        self.priority = priority  # on the shared GPU: lower goes first (host: 1)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.tracker = OffsetTracker()
        # Batch keys start (model, version, ...): each version's batches stop at its cap.
        self.batcher: MicroBatcher[RenderTask] = MicroBatcher(
            self.spec.max_batch,
            self.spec.max_wait_ms / 1000,
            limit=lambda key: models.batch_cap(key[0], key[1]),
        )
        self.jobs_view: CompactedView[JobState] = (
            host.jobs_view
            if host
            else CompactedView(settings, self.topics.jobs, JobState.model_validate_json)
        )
        self.control_view: CompactedView[LaneDesired] = (
            host.control_view
            if host
            else CompactedView(settings, self.topics.control, LaneDesired.model_validate_json)
        )
        self.workers_view: CompactedView[WorkerStatus] = (
            host.workers_view
            if host
            else CompactedView(settings, self.topics.workers, WorkerStatus.model_validate_json)
        )
        self.health: WorkerHealth = "starting"
        self.generation = 0  # the rolling-restart generation this instance has done
        self.jobs_done = 0
        self.restart = asyncio.Event()
        self.joined = False  # the current consumer has had its first assignment
        # (job id, attempt) held now or rendered recently by this worker.
        self.holding: set[tuple[str, int, bool]] = set()
        self.recent: OrderedDict[tuple[str, int, bool], None] = OrderedDict()
        self.in_flight = 0
        self.max_in_flight = 0
        self.paused = False
        self.slot_freed = asyncio.Event()
        self.finishing: set[asyncio.Task[None]] = set()
        self.commit_lock = asyncio.Lock()
        self.fatal: Exception | None = None
        # One inference thread: one GPU runs one batch at a time. It and the image codec
        # threads run nicer than the event loop: bulk CPU work yields to Kafka I/O.
        nicer = (settings.compute_thread_nice,)
        self.gpu = (
            host.gpu
            if host
            else ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"gpu-{lane}",
                initializer=lower_thread_priority,
                initargs=nicer,
            )
        )
        self.codec = (
            host.codec
            if host
            else ThreadPoolExecutor(
                max_workers=2,
                thread_name_prefix=f"png-{lane}",
                initializer=lower_thread_priority,
                initargs=nicer,
            )
        )

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, str, str]:
        """Worker-level metric labels: the lane and the stable version it serves."""
        return (self.lane, self.models.stable.model, self.models.stable.version)

    @property
    def peers(self) -> list[LaneWorker]:
        """The other workers on this GPU (host and guests)."""
        host = self.host or self
        return [w for w in (host, *host.guests) if w is not self]

    @property
    def cap(self) -> int:
        if self.models.paused or any(p.in_flight for p in self.peers if p.priority < self.priority):
            return 0  # paused, or yielding the GPU to more urgent work held on it
        return self.models.max_concurrency

    @property
    def ready(self) -> bool:
        return self.health == "ready"

    @property
    def all_ready(self) -> bool:
        """This worker and its guests (the process's readiness)."""
        return self.ready and all(g.ready for g in self.guests)

    async def run(self, stop: asyncio.Event) -> None:
        if self.host is None:
            self.producer = make_producer(self.settings, client_id=f"lanes-worker-{self.lane}")
            await self.producer.start()
            for guest in self.guests:
                guest.producer = self.producer
        tasks: list[asyncio.Task[Any]] = []
        guests: list[asyncio.Task[Any]] = []
        try:
            tasks = [asyncio.create_task(self._gpu_loop(), name=f"gpu-loop-{self.lane}")]
            if self.host is None:
                tasks += [
                    asyncio.create_task(self.jobs_view.follow(), name="jobs-view"),
                    asyncio.create_task(self.control_view.follow(), name="control-view"),
                    asyncio.create_task(self.workers_view.follow(), name="workers-view"),
                    asyncio.create_task(
                        serve_ops(
                            self.settings.metrics_host,
                            self.settings.metrics_port,
                            self.registry,
                            lambda: self.all_ready,
                        )
                    ),
                ]
            await self.control_view.caught_up.wait()
            desired = self.control_view.items.get(self.lane)
            if desired is not None:  # join at the lane's current revision and generation
                await self.models.apply(desired)
                self.generation = desired.restart_generation
            tasks += [
                asyncio.create_task(self._control_loop(), name=f"control-loop-{self.lane}"),
                asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat-{self.lane}"),
            ]
            guests = [asyncio.create_task(g.run(stop), name=f"guest-{g.lane}") for g in self.guests]
            while True:
                await self._consume(stop, tasks + guests)
                if stop.is_set():
                    break
                await self._restart()
        finally:
            if guests and stop.is_set():  # they drain on the same stop
                await asyncio.wait(guests, timeout=self.settings.drain_timeout_s + 5)
            for task in tasks + guests:
                task.cancel()
            await asyncio.gather(*tasks, *guests, return_exceptions=True)
            self.health = "stopped"
            with contextlib.suppress(Exception):
                await self._heartbeat()
            if self.host is None:
                assert self.producer is not None
                await self.producer.stop()
                self.gpu.shutdown(wait=False, cancel_futures=True)
                self.codec.shutdown(wait=False, cancel_futures=True)
            log.info("worker_stopped", lane=self.lane, serves=self.serves, in_flight=self.in_flight)

    async def _consume(self, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
        """One group membership: join, fetch until stop or a restart, drain, leave."""
        self.consumer = make_consumer(
            self.settings,
            group=self.group,
            client_id=f"lanes-worker-{self.lane}",
            max_partition_fetch_bytes=256 * 1024,
        )
        self.consumer.subscribe([self.source], listener=self)
        self.paused = False
        self.joined = False
        try:
            await self.consumer.start()
            log.info(
                "worker_started",
                lane=self.lane,
                serves=self.serves,
                topic=self.source,
                cap=self.cap,
                max_batch=self.spec.max_batch,
                instance=self.instance,
                device=self.settings.device,
                generation=self.generation,
            )
            await self._fetch_loop(stop, tasks)
            self.health = "draining"
            await self._heartbeat()
            await self._drain()
        finally:
            await self.consumer.stop()
            self.tracker = OffsetTracker()  # a rejoin starts from the group's commits

    async def _restart(self) -> None:
        """Rolling restart of this instance: it has drained and left the group; reload."""
        self.health = "restarting"
        await self._heartbeat()
        target = self.models.desired.restart_generation
        log.info("worker_restarting", generation=target)
        await self.models.reload()
        self.generation = target
        self.restart.clear()

    async def _control_loop(self) -> None:
        """Apply new revisions of this lane's desired state; take a restart turn when due."""
        while True:
            desired = self.control_view.items.get(self.lane)
            if desired is not None and desired.revision > self.models.applied_revision:
                await self.models.apply(desired)
                self.slot_freed.set()  # a new cap or pause takes effect now
                await self._heartbeat()
            if (
                self.models.desired.restart_generation > self.generation
                and self.ready
                and not self.restart.is_set()
                and self._my_restart_turn()
            ):
                self.restart.set()
            await asyncio.sleep(0.1)

    def _my_restart_turn(self) -> bool:
        """Every fresh instance of the lane before this one (by name) is back and ready."""
        target = self.models.desired.restart_generation
        now = datetime.now(UTC)
        for peer in self.workers_view.items.values():
            if (
                peer.lane == self.lane
                and peer.instance < self.instance
                and (now - peer.at).total_seconds() < self.settings.worker_stale_s
                and peer.health != "stopped"
                and (peer.restart_generation < target or peer.health != "ready")
            ):
                return False
        return True

    def status(self) -> WorkerStatus:
        m = self.models
        return WorkerStatus(
            instance=self.instance,
            lane=self.lane,
            serves=self.serves,
            health=self.health,
            stable=m.stable,
            canary=m.canary,
            canary_percent=m.canary_percent,
            applied_revision=m.applied_revision,
            restart_generation=self.generation,
            load_errors=m.load_errors,
            in_flight=self.in_flight,
            jobs_done=self.jobs_done,
            device=self.settings.device,
        )

    async def _heartbeat(self) -> None:
        self._export_batching()
        await self._send(
            [Output(self.topics.workers, self.instance, self.status().model_dump_json().encode())]
        )

    def _export_batching(self) -> None:
        for engine in self.models.engines.values():
            labels = _labels(self.lane, engine)
            self.metrics.batch_cap.labels(*labels).set(
                self.models.batch_cap(engine.name, engine.version)
            )
            profile = self.models.batch_profiles.get((engine.name, engine.version))
            for size, seconds in profile.per_image_s.items() if profile else ():
                self.metrics.batch_seconds_per_image.labels(*labels, str(size)).set(seconds)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._heartbeat()
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _fetch_loop(self, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
        assert self.consumer is not None
        last_lag = 0.0
        while not stop.is_set() and not self.restart.is_set():
            if self.fatal is not None:
                raise RuntimeError(
                    "worker stopped: an outcome could not be published"
                ) from self.fatal
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if time.monotonic() - last_lag > 1.0:
                last_lag = time.monotonic()
                await self._update_lag()
            self.metrics.capacity.labels(*self.labels).set(self.cap)
            free = self.cap - self.in_flight
            if free <= 0:
                self._pause()
                self.slot_freed.clear()
                try:
                    await asyncio.wait_for(self.slot_freed.wait(), 0.5)
                except TimeoutError:
                    pass
                continue
            self._resume()
            batches = await self.consumer.getmany(timeout_ms=100, max_records=free)
            if self.health != "ready" and self.joined:  # in the group, partitions or not
                self.health = "ready"
                await self._heartbeat()
            for tp, records in batches.items():
                for record in records:
                    await self._admit(tp, record)

    async def _drain(self) -> None:
        """Stop fetching; finish what is held within the deadline; commit."""
        self._pause()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        log.info(
            "worker_draining", in_flight=self.in_flight, deadline_s=self.settings.drain_timeout_s
        )
        while self.in_flight > 0 and time.monotonic() < deadline:
            self.slot_freed.clear()
            try:
                await asyncio.wait_for(self.slot_freed.wait(), 0.2)
            except TimeoutError:
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
            for peer in self.peers:  # a less urgent peer may take jobs again
                peer.slot_freed.set()

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
        return (
            job.terminal
            or job.attempt > event.attempt
            or any(
                a.attempt == event.attempt and a.stage == self.stage_of(event)
                for a in job.artifacts
            )
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
        if self._canceled(event.job_id):
            log.info("canceled_job_skipped")
            await self._send([self._canceled_output(event, None)])
            self.tracker.done(tp, record.offset)
            await self._commit()
            return
        init_image = None
        if event.init_artifact_uri is not None:
            try:
                init_image = await asyncio.get_running_loop().run_in_executor(
                    self.codec, self.store.open_image, event.init_artifact_uri
                )
            except ArtifactError as exc:  # the job fails with the reason; never stuck
                log.warning("init_artifact_unreadable", error=str(exc))
                self.metrics.failures.labels(*self.labels, "unreadable_artifact").inc()
                await self._send(
                    [
                        Output(
                            self.topics.renders,
                            event.job_id,
                            RenderFailed(
                                job_id=event.job_id,
                                producer=f"lanes-worker-{self.lane}",
                                lane=self.lane,
                                attempt=event.attempt,
                                error=f"cannot refine: {exc}",
                            ).to_bytes(),
                        )
                    ]
                )
                self.tracker.done(tp, record.offset)
                await self._commit()
                return
        request = RenderRequest(
            prompt=event.spec.prompt,
            width=event.width,
            height=event.height,
            steps=self.models.steps(event.sample_steps),
            guidance_scale=event.guidance_scale,
            seed=event.seed,
            init_image=init_image,
            strength=event.strength,
        )
        engine = self.models.engine_for(event.job_id, event.stable_only)
        self.holding.add(_task_key(event))
        self._hold(+1)
        self.batcher.put(
            (engine.name, engine.version, batch_key(request)),
            RenderTask(tp, record.offset, event, request, datetime.now(UTC), engine),
        )

    # ---- rendering ---------------------------------------------------------------------

    async def _gpu_loop(self) -> None:
        while True:
            batch = await self.batcher.next_batch()
            async with self.device.turn(self.priority):  # the GPU is shared with any guest
                started_at = datetime.now(UTC)
                # Progress events are not waited for here (the render starts at once);
                # _finish awaits their acks before it publishes the outcome.
                started = await self._enqueue(
                    [
                        Output(
                            self.topics.renders,
                            t.event.job_id,
                            RenderStarted(
                                job_id=t.event.job_id,
                                producer=f"lanes-worker-{self.lane}",
                                lane=self.lane,
                                model=t.engine.name,
                                version=t.engine.version,
                                instance=self.instance,
                                attempt=t.event.attempt,
                            ).to_bytes(),
                        )
                        for t in batch
                    ]
                )
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
        engine = batch[0].engine
        labels = _labels(self.lane, engine)
        reqs = [t.request for t in batch]

        def canceled() -> bool:
            return all(self._canceled(t.event.job_id) for t in batch)

        try:
            # A batch runs between the steps of a less urgent peer's render in progress; a
            # render lets more urgent peers' batches in between its steps.
            outputs = await self.device.render(
                self.gpu,
                lambda between: engine.render_batch(reqs, canceled, between),
                priority=self.priority,
                preempt=any(p.priority > self.priority for p in self.peers),
                preemptible=any(p.priority < self.priority for p in self.peers),
            )
            self.metrics.batch_size.labels(*labels).observe(len(batch))
            self.metrics.inference.labels(*labels).observe(outputs[0].inference_ms / 1000)
            return list(zip(batch, outputs, strict=True))
        except Interrupted as exc:  # every job of the batch was canceled
            log.info("render_interrupted", batch=len(batch), step=exc.step)
            return [(t, exc) for t in batch]
        except OutOfMemory as exc:
            self.metrics.ooms.labels(*labels).inc()
            await loop.run_in_executor(self.gpu, free_cached_memory)
            log.warning("out_of_memory", batch=len(batch), error=str(exc)[:300])
            if len(batch) == 1:
                return [(batch[0], exc)]
            half = len(batch) // 2
            return await self._render_fitting(batch[:half]) + await self._render_fitting(
                batch[half:]
            )
        except Exception as exc:  # noqa: BLE001 - check_inputs, or a broken model version:
            log.warning(
                "render_error",
                batch=len(batch),
                model=engine.name,  # fail these jobs,
                version=engine.version,
                error=str(exc)[:300],
            )  # keep the worker
            return [(t, exc) for t in batch]
        finally:
            self.metrics.peak_memory.labels(*labels, engine.device).set(
                peak_memory_bytes(engine.device)
            )

    async def _finish(
        self,
        results: list[tuple[RenderTask, RenderOutput | Exception]],
        started_at: datetime,
        pending: list[asyncio.Future[Any]],
    ) -> None:
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

    async def _publish_outcome(
        self, task: RenderTask, result: RenderOutput | Exception, started_at: datetime
    ) -> None:
        if self._canceled(task.event.job_id):  # canceled while queued here or rendering
            step = result.step if isinstance(result, Interrupted) else task.request.steps
            await self._send([self._canceled_output(task.event, step)])
            return
        if isinstance(result, Exception):
            await self._send(self._unrendered(task, result))
            return
        stored = time.perf_counter()
        uri = await asyncio.get_running_loop().run_in_executor(
            self.codec,
            self.store.put_png,
            task.event.job_id,
            f"{self.stage_of(task.event)}-a{task.event.attempt}",
            result.image,
        )
        store_ms = (time.perf_counter() - stored) * 1000
        outputs = [self._completed(task, result, uri, started_at, store_ms)]
        if self.spec.cascade is not None and task.event.init_artifact_uri is None:
            outputs.append(self._cascade(task.event, uri))
        await self._send(outputs)

    def _cascade(self, e: GenerationRouted, draft_uri: str) -> Output:
        """The refine/upscale pass of a cascade route, on its own lane and queue."""
        assert self.spec.cascade is not None
        cascade = self.spec.cascade
        routed = route(
            self.routes,
            self.control_view.items,
            Job.of(e),
            cascade.lane,
            producer=f"lanes-worker-{self.lane}",
            size=(cascade.width, cascade.height),
            init_artifact_uri=draft_uri,
        )
        return Output(self.topics.lane(self.spec.cascade.lane), e.job_id, routed.to_bytes())

    def _release(self, task: RenderTask, rendered: bool = False) -> None:
        key = _task_key(task.event)
        self.holding.discard(key)
        self.jobs_done += 1
        if rendered:
            self.recent[key] = None
            while len(self.recent) > RECENT_LIMIT:
                self.recent.popitem(last=False)
        self._hold(-1)

    def _completed(
        self,
        task: RenderTask,
        result: RenderOutput,
        uri: str,
        started_at: datetime,
        store_ms: float,
    ) -> Output:
        e = task.event
        now = datetime.now(UTC)
        # Until the batch began on the GPU thread (later than its turn when it waited for a
        # step boundary of the host's render).
        began = datetime.fromtimestamp(result.started_at, UTC) if result.started_at else started_at
        queue_wait = max(0.0, (began - e.requested_at).total_seconds())
        total = (now - e.requested_at).total_seconds()
        labels = _labels(self.lane, task.engine)
        self.metrics.jobs.labels(*labels, "ok").inc()
        self.metrics.queue_wait.labels(*labels).observe(queue_wait)
        self.metrics.end_to_end.labels(*labels).observe(total)
        done = RenderCompleted(
            job_id=e.job_id,
            producer=f"lanes-worker-{self.lane}",
            lane=self.lane,
            attempt=e.attempt,
            stage=self.stage_of(e),
            model=task.engine.name,
            spec=e.spec,
            requested_at=e.requested_at,
            next_stage="upscale" if self.spec.cascade and e.init_artifact_uri is None else None,
            version=task.engine.version,
            instance=self.instance,
            artifact_uri=uri,
            width=result.image.width,
            height=result.image.height,
            seed=e.seed,
            sample_steps=task.request.steps,
            expected_text=e.spec.expected_text,
            timings=Timings(
                queue_wait_ms=queue_wait * 1000,
                inference_ms=result.inference_ms,
                total_ms=total * 1000,
                batch_size=result.batch_size,
                store_ms=store_ms,
                preempted_ms=result.preempted_ms or None,
                kafka_wait_ms=max(0.0, (task.fetched_at - e.requested_at).total_seconds() * 1000),
            ),
        )
        log.info(
            "render_completed",
            job_id=e.job_id,
            batch=result.batch_size,
            inference_ms=round(result.inference_ms, 1),
        )
        return Output(self.topics.renders, e.job_id, done.to_bytes())

    def _unrendered(self, task: RenderTask, exc: Exception) -> list[Output]:
        e = task.event
        producer = f"lanes-worker-{self.lane}"
        fallback = self.spec.fallback_lane
        labels = _labels(self.lane, task.engine)
        if isinstance(exc, OutOfMemory) and fallback and fallback != self.lane:
            reason = f"out of memory on lane {self.lane}: {exc}"[:500]
            self.metrics.jobs.labels(*labels, "rerouted").inc()
            self.metrics.failures.labels(*labels, "oom_rerouted").inc()
            log.warning("job_rerouted", job_id=e.job_id, to_lane=fallback, reason=reason)
            routed = route(
                self.routes,
                self.control_view.items,
                Job.of(e, attempt=e.attempt + 1),
                fallback,
                reason,
                producer=producer,
            )
            rerouted = RenderRerouted(
                job_id=e.job_id,
                producer=producer,
                lane=self.lane,
                to_lane=fallback,
                reason=reason,
                attempt=e.attempt + 1,
            )
            # The reroute record first: the job view must know the new attempt is coming.
            return [
                Output(self.topics.renders, e.job_id, rerouted.to_bytes()),
                Output(self.topics.lane(fallback), e.job_id, routed.to_bytes()),
            ]
        if not e.stable_only and not self.models.is_stable(task.engine):
            return self._retry_on_stable(task, exc)
        reason = (
            "oom"
            if isinstance(exc, OutOfMemory)
            else "invalid"
            if isinstance(exc, ValueError)
            else "error"
        )
        self.metrics.jobs.labels(*labels, "failed").inc()
        self.metrics.failures.labels(*labels, reason).inc()
        failed = RenderFailed(
            job_id=e.job_id,
            producer=producer,
            lane=self.lane,
            model=task.engine.name,
            version=task.engine.version,
            attempt=e.attempt,
            error=str(exc)[:1000],
        )
        return [Output(self.topics.renders, e.job_id, failed.to_bytes())]

    def _canceled(self, job_id: str) -> bool:
        job = self.jobs_view.items.get(job_id)
        return job is not None and (job.cancel_requested or job.status == "canceled")

    def _canceled_output(self, e: GenerationRouted, step: int | None) -> Output:
        self.metrics.jobs.labels(*self.labels, "canceled").inc()
        log.info("job_canceled", job_id=e.job_id, at_step=step)
        return Output(
            self.topics.renders,
            e.job_id,
            RenderCanceled(
                job_id=e.job_id,
                producer=f"lanes-worker-{self.lane}",
                lane=self.lane,
                attempt=e.attempt,
                at_step=step,
            ).to_bytes(),
        )

    def _retry_on_stable(self, task: RenderTask, exc: Exception) -> list[Output]:
        """A job the canary (or a version being replaced) failed gets one more attempt on the
        stable version; the reroute record names the failed version for the canary judge."""
        e, engine = task.event, task.engine
        producer = f"lanes-worker-{self.lane}"
        reason = f"{engine.name} {engine.version} failed: {exc}"[:500]
        self.metrics.jobs.labels(*_labels(self.lane, engine), "retried_on_stable").inc()
        log.warning("job_retried_on_stable", job_id=e.job_id, version=engine.version, reason=reason)
        rerouted = RenderRerouted(
            job_id=e.job_id,
            producer=producer,
            lane=self.lane,
            to_lane=self.lane,
            reason=reason,
            attempt=e.attempt + 1,
            model=engine.name,
            version=engine.version,
        )
        routed = route(
            self.routes,
            self.control_view.items,
            Job.of(e, attempt=e.attempt + 1),
            self.lane,
            reason,
            producer=producer,
            size=(e.width, e.height),
            init_artifact_uri=e.init_artifact_uri,
            stable_only=True,
        )
        return [
            Output(self.topics.renders, e.job_id, rerouted.to_bytes()),
            Output(self.topics.lane(self.lane), e.job_id, routed.to_bytes()),
        ]

    # ---- Kafka I/O ---------------------------------------------------------------------

    async def _enqueue(self, outputs: list[Output]) -> list[asyncio.Future[Any]]:
        """Hand outputs to the producer; the returned futures resolve on the broker's ack."""
        assert self.producer is not None
        return [
            await self.producer.send(
                o.topic, value=o.value, key=o.key.encode() if isinstance(o.key, str) else o.key
            )
            for o in outputs
        ]

    async def _send(self, outputs: list[Output]) -> None:
        assert self.producer is not None
        await publish_all(self.producer, outputs)

    async def _commit(self) -> None:
        assert self.consumer is not None
        async with self.commit_lock:
            assigned = self.consumer.assignment()
            points = {tp: off for tp, off in self.tracker.to_commit().items() if tp in assigned}
            if not points:
                return
            if await commit_or_skip(self.consumer, points):
                self.tracker.mark_committed(points)

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
        self.joined = True
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))


def _task_key(event: GenerationRouted) -> tuple[str, int, bool]:
    return (event.job_id, event.attempt, event.init_artifact_uri is not None)


def _labels(lane: str, engine: DiffusionEngine) -> tuple[str, str, str]:
    return (lane, engine.name, engine.version)


async def load_guests(
    settings: Settings,
    routes: Routes,
    lane: str,
    models: LaneModels,
    control: dict[str, LaneDesired],
) -> dict[str, LaneModels]:
    """The models of each lane this worker assists or backfills, within the one memory
    budget it shares with its own lane's models. A lane whose model does not fit is not
    helped (logged); the worker still serves its own lane."""
    loaded: dict[str, LaneModels] = {}
    if not settings.assist:
        return loaded
    for helped in routes.lanes[lane].assists + routes.lanes[lane].backfills:
        guest = LaneModels(settings, helped, routes)
        guest.neighbours = [models, *loaded.values()]
        try:
            engine = await guest.start(control.get(helped))
        except Exception as exc:  # noqa: BLE001 - assisting is optional; serving the lane is not
            log.error("assist_refused", lane=lane, helps=helped, error=str(exc)[:300])
            continue
        log.info(
            "assist_loaded",
            lane=lane,
            helps=helped,
            model=engine.name,
            version=engine.version,
            footprint_mb=round(engine.footprint_bytes / 2**20, 1),
        )
        for other in (models, *loaded.values()):
            other.neighbours.append(guest)
        loaded[helped] = guest
    return loaded


async def run(
    settings: Settings,
    lane: str,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
    on_ready: Any = None,
    instance: str | None = None,
) -> None:
    stop = stop_on_signals(stop)
    routes = load_routes(settings.routes_file)
    if lane not in routes.lanes:
        raise SystemExit(f"lane {lane!r} is not in the routes file (lanes: {sorted(routes.lanes)})")
    models = LaneModels(settings, lane, routes)
    started = time.perf_counter()
    # Start on the lane's current version, not the routes file's only to switch at once.
    control = await CompactedView(
        settings, Topics(settings.topic_prefix).control, LaneDesired.model_validate_json
    ).load()
    engine = await models.start(control.get(lane))
    log.info(
        "engine_loaded",
        lane=lane,
        model=engine.name,
        version=engine.version,
        device=engine.device,
        load_s=round(time.perf_counter() - started, 2),
        footprint_mb=round(engine.footprint_bytes / 2**20, 1),
    )
    guest_models = await load_guests(settings, routes, lane, models, control)
    freeze_startup_heap()  # torch, diffusers and the models: ~500k objects no collection scans
    worker = LaneWorker(
        settings, lane, routes, models, registry or CollectorRegistry(), instance=instance
    )
    for helped, helped_models in guest_models.items():
        urgent = helped in routes.lanes[lane].assists  # else a lane it backfills
        LaneWorker(
            settings,
            helped,
            routes,
            helped_models,
            worker.registry,
            host=worker,
            priority=0 if urgent else 2,
        )
    if on_ready is not None:
        on_ready(worker)
    await worker.run(stop)
