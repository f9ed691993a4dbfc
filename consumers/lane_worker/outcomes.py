"""The outcome of each job, published: stored image and render.completed (plus the
cascade's refine pass), failure, fallback on out-of-memory, retry on stable, canceled."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import structlog

from consumers.lane_worker.tasks import RECENT_LIMIT, RenderTask, labels_of, task_key
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
from services.storage.artifacts import ArtifactError, ArtifactUnavailable
from services.storage.outage import wait_out_outage

__all__ = ["Outcomes"]

log = structlog.get_logger("lanes.worker")


class Outcomes:
    """Part of ``LaneWorker`` (a mixin, one concern of the class); see the module doc."""

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
        name = f"{self.stage_of(task.event)}-a{task.event.attempt}"
        try:  # boto3 retries each call; a store that is away is waited out, within a bound
            uri = await wait_out_outage(
                lambda: self.store.put_png(task.event.job_id, name, result.image),
                bound_s=self.settings.storage.outage_wait_s,
                executor=self.codec,
                what="image upload",
            )
        except (ArtifactError, ArtifactUnavailable) as exc:  # never succeeded without it
            log.error("artifact_store_failed", job_id=task.event.job_id, error=str(exc)[:300])
            self.metrics.failures.labels(*labels_of(self.lane, task.engine), "store").inc()
            failed = f"cannot store the image: {exc}"[:1000]
            await self._send([self._failed_output(task.event, failed, task.engine, "store")])
            return
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
        key = task_key(task.event)
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
        labels = labels_of(self.lane, task.engine)
        self.metrics.jobs.labels(*labels, "ok").inc()
        self.metrics.images.labels(*labels).inc()
        if result.cost_usd is not None:
            self.metrics.cost.labels(*labels).inc(result.cost_usd)
        # The trace id as an exemplar: a slow bucket on the dashboard leads to a job's trace.
        trace_id = trace_id_of(task.span)
        exemplar = {"trace_id": trace_id} if trace_id else None
        self.metrics.queue_wait.labels(*labels).observe(queue_wait, exemplar)
        self.metrics.end_to_end.labels(*labels).observe(total, exemplar)
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
            provider=task.engine.provider,
            cost_usd=result.cost_usd,
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
        """Where a job the engine could not render goes: the fallback lane (out of memory;
        a provider that refuses or keeps failing; a safety block where the route says so),
        the stable version (a canary's failure), or failed with its reason."""
        e = task.event
        producer = f"lanes-worker-{self.lane}"
        fallback = self.spec.fallback_lane
        labels = labels_of(self.lane, task.engine)
        provider_down = isinstance(exc, ProviderUnavailable | ProviderFailed)
        canary = not e.stable_only and not self.models.is_stable(task.engine)
        if provider_down and canary:
            return self._retry_on_stable(task, exc)
        to_fallback = (
            isinstance(exc, OutOfMemory)
            or provider_down
            or (isinstance(exc, SafetyBlocked) and self.spec.on_safety == "fallback")
        )
        if to_fallback and fallback and fallback != self.lane:
            if isinstance(exc, OutOfMemory):
                reason, counted = f"out of memory on lane {self.lane}: {exc}", "oom_rerouted"
            else:
                assert isinstance(exc, ProviderError)
                reason = f"{task.engine.name} on lane {self.lane}: {exc.reason}: {exc}"
                counted = f"{exc.reason}_rerouted"
            reason = reason[:500]
            self.metrics.jobs.labels(*labels, "rerouted").inc()
            self.metrics.failures.labels(*labels, counted).inc()
            log.warning("job_rerouted", job_id=e.job_id, to_lane=fallback, reason=reason)
            routed = route(
                self.routes,
                self.control_view.items,
                Job.of(e, attempt=e.attempt + 1),
                fallback,
                reason,
                producer=producer,
            )
            return reroute(self.topics, routed, self.lane)
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
        self.metrics.jobs.labels(*labels, "failed").inc()
        self.metrics.failures.labels(*labels, reason).inc()
        return [self._failed_output(e, str(exc)[:1000], task.engine, reason)]

    def _failed_output(
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
            producer=f"lanes-worker-{self.lane}",
            lane=self.lane,
            model=engine.name if engine else None,
            version=engine.version if engine else None,
            attempt=e.attempt,
            error=error,
            reason=reason,
        )
        return Output(self.topics.renders, e.job_id, failed.to_bytes())

    def _canceled(self, job_id: str) -> bool:
        job = self.jobs_view.get(job_id)
        return job is not None and job.canceling

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
        self.metrics.jobs.labels(*labels_of(self.lane, engine), "retried_on_stable").inc()
        log.warning("job_retried_on_stable", job_id=e.job_id, version=engine.version, reason=reason)
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
        return reroute(self.topics, routed, self.lane, failed=(engine.name, engine.version))
