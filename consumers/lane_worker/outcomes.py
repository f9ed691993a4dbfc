"""The outcome of each job, published: stored image and render.completed (plus the
cascade's refine pass), failure, fallback on out-of-memory, retry on stable, canceled;
then the job's offset is done and its slot freed."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import trace

from consumers.lane_worker.commits import Commits
from consumers.lane_worker.lane import LaneContext
from consumers.lane_worker.models import LaneModels
from consumers.lane_worker.outbox import Outbox
from consumers.lane_worker.slots import Slots
from consumers.lane_worker.tasks import RenderTask, task_key
from consumers.machinery.loop import Output
from consumers.machinery.rerouting import reroute
from producers.tracing import trace_id_of
from schemas.events import (
    GenerationRouted,
    RenderCanceled,
    RenderCompleted,
    RenderFailed,
    Timings,
)
from services.domain.routing import Job, route
from services.engines.engine import Engine, RenderOutput
from services.exceptions import (
    Interrupted,
    OutOfMemory,
    ProviderError,
    ProviderFailed,
    ProviderUnavailable,
    SafetyBlocked,
)
from services.storage.artifacts import ArtifactError, ArtifactStore, ArtifactUnavailable
from services.storage.outage import wait_out_outage

__all__ = ["Outcomes", "Result"]

log = structlog.get_logger("lanes.worker")

Result = tuple[RenderTask, RenderOutput | Exception]


@dataclass
class Outcomes:
    """Publishes each held job's outcome. A publish that fails after the producer's own
    retries is ``fatal``: the worker stops with its offsets uncommitted, so the jobs are
    redelivered to a healthy member."""

    lane: LaneContext
    models: LaneModels
    store: ArtifactStore
    codec: Executor  # image encoding and uploads, off the event loop
    outbox: Outbox
    slots: Slots
    commits: Commits
    fatal: Exception | None = field(default=None, init=False)

    async def finish(
        self, results: list[Result], started_at: datetime, pending: list[asyncio.Future[Any]]
    ) -> None:
        """Store and publish each job's outcome as soon as it is ready (after its progress
        events' acks, ``pending``), then commit."""
        try:
            await asyncio.gather(*pending)
            await asyncio.gather(*(self._traced(t, r, started_at) for t, r in results))
        except Exception as exc:  # noqa: BLE001
            log.error("publish_failed", error=str(exc)[:500])
            self.fatal = exc
            self.slots.freed.set()
            for task, _ in results:
                task.span.set_status(trace.StatusCode.ERROR, "publish failed")
                task.span.end()
            return
        for task, _ in results:
            self.commits.done(task.tp, task.offset)
            self.slots.release(task_key(task.event), rendered=True)
            task.span.end()
        await self.commits.commit()

    async def _traced(
        self, task: RenderTask, result: RenderOutput | Exception, started_at: datetime
    ) -> None:
        """The outcome's storing and publishing, as a span of the job's (its outputs carry
        that span's context on to the next hop)."""
        with (
            trace.use_span(task.span, end_on_exit=False),
            trace.get_tracer("lanes").start_as_current_span("store and publish"),
        ):
            await self.publish(task, result, started_at)

    async def publish(
        self, task: RenderTask, result: RenderOutput | Exception, started_at: datetime
    ) -> None:
        if self.lane.canceled(task.event.job_id):  # canceled while queued here or rendering
            step = result.step if isinstance(result, Interrupted) else task.request.steps
            await self.outbox.send([self.canceled_output(task.event, step)])
            return
        if isinstance(result, Exception):
            await self.outbox.send(self.unrendered(task, result))
            return
        stored = time.perf_counter()
        name = f"{self.lane.stage_of(task.event)}-a{task.event.attempt}"
        try:  # boto3 retries each call; a store that is away is waited out, within a bound
            uri = await wait_out_outage(
                lambda: self.store.put_png(task.event.job_id, name, result.image),
                bound_s=self.lane.settings.storage.outage_wait_s,
                executor=self.codec,
                what="image upload",
            )
        except (ArtifactError, ArtifactUnavailable) as exc:  # never succeeded without it
            log.error("artifact_store_failed", job_id=task.event.job_id, error=str(exc)[:300])
            self.lane.metrics.failures.labels(*self.lane.labels_of(task.engine), "store").inc()
            failed = f"cannot store the image: {exc}"[:1000]
            await self.outbox.send([self.failed_output(task.event, failed, task.engine, "store")])
            return
        store_ms = (time.perf_counter() - stored) * 1000
        outputs = [self._completed(task, result, uri, started_at, store_ms)]
        if self.lane.spec.cascade is not None and task.event.init_artifact_uri is None:
            outputs.append(self._cascade(task.event, uri))
        await self.outbox.send(outputs)

    def _cascade(self, e: GenerationRouted, draft_uri: str) -> Output:
        """The refine/upscale pass of a cascade route, on its own lane and queue."""
        assert self.lane.spec.cascade is not None
        cascade = self.lane.spec.cascade
        routed = route(
            self.lane.routes,
            self.lane.control_view.items,
            Job.of(e),
            cascade.lane,
            producer=self.lane.producer,
            size=(cascade.width, cascade.height),
            init_artifact_uri=draft_uri,
        )
        return Output(
            self.lane.topics.lane(self.lane.spec.cascade.lane), e.job_id, routed.to_bytes()
        )

    def _completed(
        self,
        task: RenderTask,
        result: RenderOutput,
        uri: str,
        started_at: datetime,
        store_ms: float,
    ) -> Output:
        e = task.event
        cascades = self.lane.spec.cascade is not None and e.init_artifact_uri is None
        now = datetime.now(UTC)
        # Until the batch began on the GPU thread (later than its turn when it waited for a
        # step boundary of the host's render).
        began = datetime.fromtimestamp(result.started_at, UTC) if result.started_at else started_at
        queue_wait = max(0.0, (began - e.requested_at).total_seconds())
        total = (now - e.requested_at).total_seconds()
        labels = self.lane.labels_of(task.engine)
        self.lane.metrics.jobs.labels(*labels, "ok").inc()
        self.lane.metrics.images.labels(*labels).inc()
        if result.cost_usd is not None:
            self.lane.metrics.cost.labels(*labels).inc(result.cost_usd)
        # The trace id as an exemplar: a slow bucket on the dashboard leads to a job's trace.
        trace_id = trace_id_of(task.span)
        exemplar = {"trace_id": trace_id} if trace_id else None
        self.lane.metrics.queue_wait.labels(*labels).observe(queue_wait, exemplar)
        self.lane.metrics.end_to_end.labels(*labels).observe(total, exemplar)
        done = RenderCompleted(
            job_id=e.job_id,
            producer=self.lane.producer,
            lane=self.lane.name,
            attempt=e.attempt,
            stage=self.lane.stage_of(e),
            model=task.engine.name,
            spec=e.spec,
            requested_at=e.requested_at,
            next_stage="upscale" if cascades else None,
            version=task.engine.version,
            provider=task.engine.provider,
            cost_usd=result.cost_usd,
            instance=self.lane.instance,
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
        return Output(self.lane.topics.renders, e.job_id, done.to_bytes())

    def unrendered(self, task: RenderTask, exc: Exception) -> list[Output]:
        """Where a job the engine could not render goes: the fallback lane (out of memory;
        a provider that refuses or keeps failing; a safety block where the route says so),
        the stable version (a canary's failure), or failed with its reason."""
        e = task.event
        producer = self.lane.producer
        fallback = self.lane.spec.fallback_lane
        labels = self.lane.labels_of(task.engine)
        provider_down = isinstance(exc, ProviderUnavailable | ProviderFailed)
        canary = not e.stable_only and not self.models.is_stable(task.engine)
        if provider_down and canary:
            return self._retry_on_stable(task, exc)
        to_fallback = (
            isinstance(exc, OutOfMemory)
            or provider_down
            or (isinstance(exc, SafetyBlocked) and self.lane.spec.on_safety == "fallback")
        )
        if to_fallback and fallback and fallback != self.lane.name:
            if isinstance(exc, OutOfMemory):
                reason, counted = f"out of memory on lane {self.lane.name}: {exc}", "oom_rerouted"
            else:
                assert isinstance(exc, ProviderError)
                reason = f"{task.engine.name} on lane {self.lane.name}: {exc.reason}: {exc}"
                counted = f"{exc.reason}_rerouted"
            reason = reason[:500]
            self.lane.metrics.jobs.labels(*labels, "rerouted").inc()
            self.lane.metrics.failures.labels(*labels, counted).inc()
            log.warning("job_rerouted", job_id=e.job_id, to_lane=fallback, reason=reason)
            routed = route(
                self.lane.routes,
                self.lane.control_view.items,
                Job.of(e, attempt=e.attempt + 1),
                fallback,
                reason,
                producer=producer,
            )
            return reroute(self.lane.topics, routed, self.lane.name)
        if canary and not isinstance(exc, SafetyBlocked):  # safety: no other engine
            return self._retry_on_stable(task, exc)
        reason = (
            "oom"
            if isinstance(exc, OutOfMemory)
            else exc.reason
            if isinstance(exc, ProviderError)
            else "invalid"
            if isinstance(exc, ValueError)
            else "error"
        )
        self.lane.metrics.jobs.labels(*labels, "failed").inc()
        self.lane.metrics.failures.labels(*labels, reason).inc()
        return [self.failed_output(e, str(exc)[:1000], task.engine, reason)]

    def failed_output(
        self,
        e: GenerationRouted,
        error: str,
        engine: Engine | None = None,
        reason: str | None = None,
    ) -> Output:
        """render.failed for the job: it ends failed with ``error`` and its ``reason``
        (safety, invalid, oom, provider_unavailable...)."""
        failed = RenderFailed(
            job_id=e.job_id,
            producer=self.lane.producer,
            lane=self.lane.name,
            model=engine.name if engine else None,
            version=engine.version if engine else None,
            attempt=e.attempt,
            error=error,
            reason=reason,
        )
        return Output(self.lane.topics.renders, e.job_id, failed.to_bytes())

    def canceled_output(self, e: GenerationRouted, step: int | None) -> Output:
        self.lane.metrics.jobs.labels(*self.models.labels, "canceled").inc()
        log.info("job_canceled", job_id=e.job_id, at_step=step)
        return Output(
            self.lane.topics.renders,
            e.job_id,
            RenderCanceled(
                job_id=e.job_id,
                producer=self.lane.producer,
                lane=self.lane.name,
                attempt=e.attempt,
                at_step=step,
            ).to_bytes(),
        )

    def _retry_on_stable(self, task: RenderTask, exc: Exception) -> list[Output]:
        """A job the canary (or a version being replaced) failed gets one more attempt on the
        stable version; the reroute record names the failed version for the canary judge."""
        e, engine = task.event, task.engine
        producer = self.lane.producer
        reason = f"{engine.name} {engine.version} failed: {exc}"[:500]
        self.lane.metrics.jobs.labels(*self.lane.labels_of(engine), "retried_on_stable").inc()
        log.warning("job_retried_on_stable", job_id=e.job_id, version=engine.version, reason=reason)
        routed = route(
            self.lane.routes,
            self.lane.control_view.items,
            Job.of(e, attempt=e.attempt + 1),
            self.lane.name,
            reason,
            producer=producer,
            size=(e.width, e.height),
            init_artifact_uri=e.init_artifact_uri,
            stable_only=True,
        )
        return reroute(
            self.lane.topics, routed, self.lane.name, failed=(engine.name, engine.version)
        )
