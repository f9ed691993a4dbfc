"""Lane worker [group lanes-lane-<lane>]: renders routed jobs, one process per GPU.

This module is the worker's lifecycle (membership, fetch loop, backpressure, drain,
rebalance); ``intake``, ``rendering``, ``outcomes`` and ``following`` (control and
heartbeats) hold the rest of the class, one concern each; ``process`` starts a worker.

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
from collections import OrderedDict
from typing import Any, Literal

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError

from consumers.lane_worker.batcher import MicroBatcher
from consumers.lane_worker.following import Following
from consumers.lane_worker.gpu_process import GpuProcess, Urgency
from consumers.lane_worker.intake import Intake
from consumers.lane_worker.models import LaneModels
from consumers.lane_worker.outcomes import Outcomes
from consumers.lane_worker.rendering import Rendering
from consumers.lane_worker.tasks import RenderTask
from consumers.machinery.loop import Output, commit_or_skip
from consumers.machinery.offsets import OffsetTracker
from consumers.machinery.runtime import Member
from schemas.control import WorkerHealth
from services.config.routes import LaneSpec
from services.engines.hosted.engine import HostedEngine
from services.kafka.clients import make_consumer

__all__ = ["LaneWorker"]

log = structlog.get_logger("lanes.worker")


class LaneWorker(Intake, Rendering, Outcomes, Following, ConsumerRebalanceListener):
    """One lane's jobs on this process's GPU, at an ``Urgency``.

    Every worker process has one host (``Urgency.OWN``: its own lane's queue) and, when its
    lane ``assists`` or ``backfills`` others, one guest per such lane (``ASSISTED`` or
    ``BACKFILL``: that lane's spill queue). Host and guests share the process's
    ``GpuProcess``: GPU thread, views, metrics, producer and /metrics port. A more urgent
    worker's batches take the next turn and run between the steps of a less urgent render
    in progress, and while a more urgent worker holds jobs, a less urgent one takes no new
    ones (they wait in Kafka)."""

    def __init__(
        self, shared: GpuProcess, lane: str, models: LaneModels, urgency: Urgency = Urgency.OWN
    ) -> None:
        settings = shared.settings
        self.shared = shared
        self.settings = settings
        self.lane = lane
        self.routes = shared.routes
        self.spec: LaneSpec = shared.routes.lanes[lane]
        self.models = models
        self.topics = shared.topics
        self.store = shared.store
        self.registry = shared.registry
        self.metrics = shared.metrics
        self.device = shared.device
        self.gpu, self.codec = shared.gpu, shared.codec
        self.jobs_view = shared.jobs_view
        self.control_view = shared.control_view
        self.workers_view = shared.workers_view
        self.priority = urgency  # on the shared GPU: lower goes first
        self.is_host = urgency is Urgency.OWN
        self.serves: Literal["lane", "spill"] = "lane" if self.is_host else "spill"
        if self.is_host:
            self.instance = shared.instance
            self.group = settings.groups.lane(lane)
            self.source = self.topics.lane(lane)
        else:
            self.instance = f"{shared.instance}+{lane}-spill"
            self.group = settings.groups.spill(lane)
            self.source = self.topics.spill(lane)
        shared.workers.append(self)
        self.consumer: AIOKafkaConsumer | None = None
        self.tracker = OffsetTracker()
        # Batch keys start (model, version, ...): each version's batches stop at its cap.
        self.batcher: MicroBatcher[RenderTask] = MicroBatcher(
            self.spec.max_batch,
            self.spec.max_wait_ms / 1000,
            limit=lambda key: models.batch_cap(key[0], key[1]),
        )
        self.health: WorkerHealth = "starting"
        self.generation = 0  # the rolling-restart generation this instance has done
        self.jobs_done = 0
        self.restart = asyncio.Event()
        self.joined = False  # the current consumer has had its first assignment
        # (job id, attempt, refine pass) held now or rendered recently by this worker.
        self.holding: set[tuple[str, int, bool]] = set()
        self.recent: OrderedDict[tuple[str, int, bool], None] = OrderedDict()
        self.in_flight = 0
        self.max_in_flight = 0
        self.paused = False
        self.slot_freed = asyncio.Event()
        self.finishing: set[asyncio.Task[None]] = set()
        self.commit_lock = asyncio.Lock()
        self.fatal: Exception | None = None
        models.observe = self._observe_engine
        for engine in models.engines.values():
            self._observe_engine(engine)

    @property
    def member(self) -> Member | None:
        """The process's producer, ops endpoints and stop (set when the process runs)."""
        return self.shared.member

    @property
    def guests(self) -> list[LaneWorker]:
        return [w for w in self.shared.workers if not w.is_host] if self.is_host else []

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, str, str]:
        """Worker-level metric labels: the lane and the stable version it serves."""
        return (self.lane, self.models.stable.model, self.models.stable.version)

    @property
    def peers(self) -> list[LaneWorker]:
        """The other workers on this GPU (host and guests)."""
        return [w for w in self.shared.workers if w is not self]

    @property
    def cap(self) -> int:
        if self.models.paused or any(p.in_flight for p in self.peers if p.priority < self.priority):
            return 0  # paused, or yielding the GPU to more urgent work held on it
        if self._provider_closed():
            return 0  # backpressure from the lane's hosted engine: jobs wait in Kafka
        return self.models.max_concurrency

    def _provider_closed(self) -> bool:
        """The stable engine is hosted and throttled, or refusing calls on a lane with no
        fallback lane (with one, jobs keep coming and go on to the fallback)."""
        engine = self.models.engines.get(self.models.stable)
        if not isinstance(engine, HostedEngine):
            return False
        return engine.throttled() or (engine.refusing() and self.spec.fallback_lane is None)

    @property
    def ready(self) -> bool:
        return self.health == "ready"

    @property
    def all_ready(self) -> bool:
        """This worker and its guests (the process's readiness)."""
        return self.ready and all(g.ready for g in self.guests)

    async def run(self, stop: asyncio.Event) -> None:
        assert self.member is not None, "run the host inside a Member (see run())"
        tasks: list[asyncio.Task[Any]] = []
        guests: list[asyncio.Task[Any]] = []
        try:
            tasks = [asyncio.create_task(self._gpu_loop(), name=f"gpu-loop-{self.lane}")]
            if self.is_host:
                tasks += [
                    asyncio.create_task(self.jobs_view.follow(), name="jobs-view"),
                    asyncio.create_task(self.control_view.follow(), name="control-view"),
                    asyncio.create_task(self.workers_view.follow(), name="workers-view"),
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
                await asyncio.wait(guests, timeout=self.settings.worker.drain_timeout_s + 5)
            for task in tasks + guests:
                task.cancel()
            await asyncio.gather(*tasks, *guests, return_exceptions=True)
            self.health = "stopped"
            with contextlib.suppress(Exception):
                await self._heartbeat()
            await self.models.close()
            if self.is_host:
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
                device=self.settings.worker.device,
                generation=self.generation,
            )
            await self._fetch_loop(stop, tasks)
            self.health = "draining"
            await self._heartbeat()
            await self._drain()
        finally:
            await self.consumer.stop()
            self.tracker = OffsetTracker()  # a rejoin starts from the group's commits

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
            self.metrics.provider_paused.labels(*self.labels).set(
                1 if self.models.provider_paused else 0
            )
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
        deadline = time.monotonic() + self.settings.worker.drain_timeout_s
        log.info(
            "worker_draining",
            in_flight=self.in_flight,
            deadline_s=self.settings.worker.drain_timeout_s,
        )
        while self.in_flight > 0 and time.monotonic() < deadline:
            self.slot_freed.clear()
            try:
                await asyncio.wait_for(self.slot_freed.wait(), 0.2)
            except TimeoutError:
                pass
        if self.finishing:
            await asyncio.wait(self.finishing, timeout=max(0.1, deadline - time.monotonic()))
        for task in list(self.finishing):  # provider calls still waiting out a throttle:
            if task.get_name() == "provider-call":  # uncommitted, so redelivered elsewhere
                task.cancel()
        await self._commit()
        if self.in_flight:
            log.warning("worker_drain_deadline", abandoned=self.in_flight)

    def _observe_engine(self, engine: Any) -> None:
        """Count each hosted engine's provider answers by outcome."""
        if isinstance(engine, HostedEngine):
            calls = self.metrics.provider_calls
            labels = (self.lane, engine.name, engine.version)
            engine.on_call = lambda outcome: calls.labels(*labels, outcome).inc()

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

    # ---- Kafka I/O ---------------------------------------------------------------------

    async def _enqueue(self, outputs: list[Output]) -> list[asyncio.Future[Any]]:
        """Hand outputs to the producer; the returned futures resolve on the broker's ack."""
        assert self.member is not None
        return await self.member.enqueue(outputs)

    async def _send(self, outputs: list[Output]) -> None:
        assert self.member is not None
        await self.member.publish(outputs)

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
        deadline = time.monotonic() + min(10.0, self.settings.worker.drain_timeout_s)
        while self.tracker.pending(revoked) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._commit()
        self.tracker.forget(revoked)
        self.paused = False  # a new assignment starts unpaused

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.joined = True
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))
