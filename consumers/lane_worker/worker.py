"""Lane worker [group lanes-lane-<lane>]: renders routed jobs, one process per GPU.

``LaneWorker`` wires its parts and runs its lifecycle (membership, fetch loop,
backpressure, drain); each part is a class whose constructor names what it uses:

- ``Intake`` (intake.py): parse, dead-letter, skip duplicates and canceled jobs, read a
  refine pass's draft, hold the job, hand it to the ``MicroBatcher``;
- ``Scheduler`` (scheduling.py): batches take turns on the shared GPU (``Turn``,
  ``DeviceTurns``), hosted calls run concurrently;
- ``Renderer`` (rendering.py): the engine call, OOM split, progress;
- ``Outcomes`` (outcomes.py): store and publish each outcome, then commit;
- ``ControlFollower`` (following.py): versions, cap, pause, rolling restart, heartbeats;
- ``Slots`` (slots.py) and ``Commits`` (commits.py): what is held, what is committed.

``process`` starts a worker process.

Its fetch loop is the second consume model beside ``consumers.machinery.loop`` (which
handles one record at a time, in order): records are held across awaits and finish out
of order, so the loop pauses its partitions when the worker is full and commits per
partition up to the first unfinished record. The error rules are the machinery's: a
record that does not parse goes to the DLQ; a transient fault (an object store that is
away) is waited out with backoff within a bound; anything else fails the job with the
reason; only a publish that fails after the producer's retries stops the worker (its
offsets uncommitted, so its jobs are redelivered).

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
  lane's spill queue through a guest ``LaneWorker`` on the same GPU thread (``Urgency``,
  ``GpuProcess``, ``consumers.lane_worker.device_turns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError
from prometheus_client import CollectorRegistry

from consumers.lane_worker.batcher import MicroBatcher
from consumers.lane_worker.commits import Commits
from consumers.lane_worker.following import ControlFollower
from consumers.lane_worker.gpu_process import GpuProcess, Turn, Urgency
from consumers.lane_worker.intake import Intake
from consumers.lane_worker.lane import LaneContext
from consumers.lane_worker.models import LaneModels
from consumers.lane_worker.outcomes import Outcomes
from consumers.lane_worker.partials import PartialImages
from consumers.lane_worker.rendering import Renderer
from consumers.lane_worker.scheduling import Scheduler
from consumers.lane_worker.slots import Slots
from consumers.lane_worker.tasks import BatchKey, RenderTask
from consumers.machinery.runtime import started_consumer
from schemas.control import WorkerHealth
from services.config.settings import Settings
from services.engines.engine import Engine
from services.kafka.clients import make_consumer

__all__ = ["LaneWorker"]

log = structlog.get_logger("lanes.worker")


class LaneWorker:
    """One lane's jobs on this process's GPU, at an ``Urgency``.

    Every worker process has one host (``Urgency.OWN``: its own lane's queue) and, when its
    lane ``assists`` or ``backfills`` others, one guest per such lane (``ASSISTED`` or
    ``BACKFILL``: that lane's spill queue). Host and guests share the process's
    ``GpuProcess``: GPU thread, views, metrics, producer and /metrics port. A more urgent
    worker's batches take the next turn and run between the steps of a less urgent render
    in progress, and while a more urgent worker holds jobs, a less urgent one takes no new
    ones (they wait in Kafka)."""

    def __init__(
        self, process: GpuProcess, lane: str, models: LaneModels, urgency: Urgency = Urgency.OWN
    ) -> None:
        settings = process.settings
        self.process = process
        self.models = models
        self.is_host = urgency is Urgency.OWN
        topics = process.topics
        self.lane = LaneContext(
            settings=settings,
            routes=process.routes,
            name=lane,
            topics=topics,
            instance=process.instance if self.is_host else f"{process.instance}+{lane}-spill",
            serves="lane" if self.is_host else "spill",
            group=settings.groups.lane(lane) if self.is_host else settings.groups.spill(lane),
            source=topics.lane(lane) if self.is_host else topics.spill(lane),
            metrics=process.metrics,
            jobs_view=process.jobs_view,
            control_view=process.control_view,
        )
        self.turn = Turn(urgency, process)
        self.slots = Slots(process.metrics, lambda: models.labels, self.turn.wake_others)
        self.commits = Commits(
            revoke_wait_s=min(10.0, settings.worker.drain_timeout_s), on_revoked=self._unpaused
        )
        spec = self.lane.spec
        # Batch keys start (model, version, ...): each version's batches stop at its cap.
        self.batcher: MicroBatcher[BatchKey, RenderTask] = MicroBatcher(
            spec.max_batch,
            spec.max_wait_ms / 1000,
            limit=lambda key: models.batch_cap(key[0], key[1]),
        )
        outbox = process.outbox
        self.outcomes = Outcomes(
            self.lane, models, process.store, process.codec, outbox, self.slots, self.commits
        )
        self.intake = Intake(
            self.lane,
            models,
            process.store,
            process.codec,
            self.slots,
            self.commits,
            self.batcher,
            outbox,
            self.outcomes,
        )
        renderer = Renderer(
            self.lane,
            models,
            process.device,
            process.gpu,
            self.turn,
            outbox,
            PartialImages(process.store),
        )
        self.scheduler = Scheduler(
            self.batcher, process.device, self.turn, renderer, self.outcomes, self.slots
        )
        self.follower = ControlFollower(self.lane, models, process.workers_view, self.slots, outbox)
        self.consumer: AIOKafkaConsumer | None = None
        self.paused = False
        process.workers.append(self)
        models.observe = self._observe_engine
        for engine in models.engines.values():
            self._observe_engine(engine)

    # ---- what the process and the tests read ------------------------------------------

    @property
    def guests(self) -> list[LaneWorker]:
        return [w for w in self.process.workers if not w.is_host] if self.is_host else []

    @property
    def settings(self) -> Settings:
        return self.lane.settings

    @property
    def registry(self) -> CollectorRegistry:
        """The process's metrics registry (/metrics)."""
        return self.process.registry

    @property
    def health(self) -> WorkerHealth:
        return self.follower.health

    @property
    def ready(self) -> bool:
        return self.follower.ready

    @property
    def generation(self) -> int:
        """The rolling-restart generation this instance has done."""
        return self.follower.generation

    @property
    def in_flight(self) -> int:
        return self.slots.in_flight

    @property
    def max_in_flight(self) -> int:
        return self.slots.max_in_flight

    @property
    def cap(self) -> int:
        """How many jobs this worker may hold now."""
        if self.models.paused or self.turn.yields():
            return 0  # paused, or yielding the GPU to more urgent work held on it
        if self._provider_closed():
            return 0  # backpressure from the lane's hosted engine: jobs wait in Kafka
        return self.models.max_concurrency

    def _provider_closed(self) -> bool:
        """The stable engine is throttled, or refusing calls on a lane with no fallback lane
        (with one, jobs keep coming and go on to the fallback)."""
        engine = self.models.engines.get(self.models.stable)
        if engine is None:
            return False
        return engine.throttled() or (engine.refusing() and self.lane.spec.fallback_lane is None)

    @property
    def all_ready(self) -> bool:
        """This worker and its guests (the process's readiness)."""
        return self.follower.ready and all(g.follower.ready for g in self.guests)

    # ---- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        tasks: list[asyncio.Task[Any]] = []
        guests: list[asyncio.Task[Any]] = []
        lane = self.lane.name
        try:
            tasks = [asyncio.create_task(self.scheduler.run(), name=f"gpu-loop-{lane}")]
            if self.is_host:
                tasks += [
                    asyncio.create_task(self.process.jobs_view.follow(), name="jobs-view"),
                    asyncio.create_task(self.process.control_view.follow(), name="control-view"),
                    asyncio.create_task(self.process.workers_view.follow(), name="workers-view"),
                ]
            await self.process.control_view.caught_up.wait()
            await self.follower.join()
            tasks += [
                asyncio.create_task(self.follower.run(), name=f"control-loop-{lane}"),
                asyncio.create_task(self.follower.heartbeats(), name=f"heartbeat-{lane}"),
            ]
            guests = [
                asyncio.create_task(g.run(stop), name=f"guest-{g.lane.name}") for g in self.guests
            ]
            while True:
                await self._consume(stop, tasks + guests)
                if stop.is_set():
                    break
                await self.follower.restart_instance()
        finally:
            if guests and stop.is_set():  # they drain on the same stop
                timeout = self.lane.settings.worker.drain_timeout_s + 5
                await asyncio.wait(guests, timeout=timeout)
            for task in tasks + guests:
                task.cancel()
            await asyncio.gather(*tasks, *guests, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.follower.set_health("stopped")
            await self.models.close()
            if self.is_host:
                self.process.gpu.shutdown(wait=False, cancel_futures=True)
                self.process.codec.shutdown(wait=False, cancel_futures=True)
            log.info("worker_stopped", lane=lane, serves=self.lane.serves, in_flight=self.in_flight)

    async def _consume(self, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
        """One group membership: join, fetch until stop or a restart, drain, leave."""
        settings = self.lane.settings

        def subscribed() -> AIOKafkaConsumer:
            made = make_consumer(
                settings,
                group=self.lane.group,
                client_id=f"lanes-worker-{self.lane.name}",
                max_partition_fetch_bytes=256 * 1024,
            )
            made.subscribe([self.lane.source], listener=self.commits)
            self.commits.attach(made)
            return made

        self.paused = False
        self.consumer = await started_consumer(subscribed, settings)
        try:
            log.info(
                "worker_started",
                lane=self.lane.name,
                serves=self.lane.serves,
                topic=self.lane.source,
                cap=self.cap,
                max_batch=self.lane.spec.max_batch,
                instance=self.lane.instance,
                device=settings.worker.device,
                generation=self.follower.generation,
            )
            await self._fetch_loop(stop, tasks)
            await self.follower.set_health("draining")
            await self._drain()
        finally:
            await self.consumer.stop()

    async def _fetch_loop(self, stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
        assert self.consumer is not None
        metrics = self.lane.metrics
        last_lag = 0.0
        while not stop.is_set() and not self.follower.restart.is_set():
            if self.outcomes.fatal is not None:
                raise RuntimeError(
                    "worker stopped: an outcome could not be published"
                ) from self.outcomes.fatal
            for task in tasks:
                if task.done() and not task.cancelled() and (exc := task.exception()):
                    raise exc
            if time.monotonic() - last_lag > 1.0:
                last_lag = time.monotonic()
                await self._update_lag()
            # Ready once in the group, partitions or not, paused or not: a worker that joins a
            # lane the operator paused is up (a rollout must not wait for a resume).
            if not self.follower.ready and self.commits.joined:
                await self.follower.set_health("ready")
                self._log_ready()
            labels = self.models.labels
            metrics.capacity.labels(*labels).set(self.cap)
            metrics.provider_paused.labels(*labels).set(1 if self.models.provider_paused else 0)
            free = self.cap - self.slots.in_flight
            if free <= 0:
                self._pause()
                self.slots.freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.slots.freed.wait(), 0.5)
                continue
            self._resume()
            batches = await self.consumer.getmany(timeout_ms=100, max_records=free)
            for tp, records in batches.items():
                for record in records:
                    await self.intake.admit(tp, record)

    async def _drain(self) -> None:
        """Stop fetching; finish what is held within the deadline; commit."""
        self._pause()
        drain_s = self.lane.settings.worker.drain_timeout_s
        deadline = time.monotonic() + drain_s
        log.info("worker_draining", in_flight=self.in_flight, deadline_s=drain_s)
        while self.slots.in_flight > 0 and time.monotonic() < deadline:
            self.slots.freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.slots.freed.wait(), 0.2)
        await self.scheduler.settle(deadline)
        await self.commits.commit()
        if self.slots.in_flight:
            log.warning("worker_drain_deadline", abandoned=self.slots.in_flight)

    def _log_ready(self) -> None:
        phases = self.process.startup
        if phases is None or not self.is_host or phases.seconds.get("ready") is not None:
            return  # (a guest, a rejoin after a restart, or a worker started by hand)
        phases.mark("views_and_group")
        phases.seconds["ready"] = phases.total()
        log.info(
            "worker_ready",
            lane=self.lane.name,
            recent_jobs=len(self.process.jobs_view),
            **{f"{k}_s": v for k, v in phases.seconds.items()},
        )

    def _observe_engine(self, engine: Engine) -> None:
        """Count each engine's provider answers by outcome (a local engine has none)."""
        calls = self.lane.metrics.provider_calls
        labels = self.lane.labels_of(engine)
        engine.on_call = lambda outcome: calls.labels(*labels, outcome).inc()

    # ---- backpressure ------------------------------------------------------------------

    def _pause(self) -> None:
        assert self.consumer is not None
        if not self.paused:
            self.consumer.pause(*self.consumer.assignment())
            self.paused = True
            self.lane.metrics.pauses.labels(*self.models.labels).inc()

    def _resume(self) -> None:
        assert self.consumer is not None
        if self.paused:
            self.consumer.resume(*self.consumer.paused())
            self.paused = False
            self.lane.metrics.resumes.labels(*self.models.labels).inc()

    def _unpaused(self) -> None:
        self.paused = False  # a new assignment starts unpaused

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
        self.lane.metrics.lag.labels(*self.models.labels).set(lag)
