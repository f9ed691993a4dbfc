"""Intake of a fetched record: parse, skip duplicates and canceled jobs, read a refine
pass's init image, then hold the job and hand it to the micro-batcher."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from aiokafka import TopicPartition
from opentelemetry import trace

from consumers.lane_worker.tasks import RenderTask, task_key
from consumers.machinery.loop import bind_record, dead_letter
from producers.tracing import context_from_headers
from schemas.events import (
    GenerationRouted,
    parse_job_event,
)
from schemas.exceptions import PoisonEvent
from services.engines.engine import RenderRequest, batch_key
from services.storage.artifacts import ArtifactError, ArtifactUnavailable
from services.storage.outage import wait_out_outage

__all__ = ["Intake"]

log = structlog.get_logger("lanes.worker")


class Intake:
    """Part of ``LaneWorker`` (a mixin, one concern of the class); see the module doc."""

    # ---- admission ---------------------------------------------------------------------

    def stage_of(self, event: GenerationRouted) -> Literal["draft", "final", "upscaled"]:
        """A refine pass makes the upscaled image; the first render of a cascade is a draft."""
        if event.init_artifact_uri is not None:
            return "upscaled"
        if self.spec.cascade is not None or event.spec.intent != "final":
            return "draft"
        return "final"

    def _already_done(self, event: GenerationRouted) -> bool:
        key = task_key(event)
        if key in self.holding or key in self.recent:
            return True
        job = self.jobs_view.get(event.job_id)
        if job is None:
            return False
        return (
            job.terminal
            or job.attempt > event.attempt
            or (event.attempt, self.stage_of(event)) in job.rendered
        )

    def _job_span(self, record: Any, event: GenerationRouted, engine: Any) -> trace.Span:
        """The job's span in this worker, from the record's append (its wait in the lane's
        queue is the first child) under the hop that routed it."""
        appended = int(record.timestamp) * 1_000_000  # ms -> ns
        tracer = trace.get_tracer("lanes")
        span = tracer.start_span(
            f"lanes-worker-{self.lane} job",
            context=context_from_headers(record.headers, event.job_id),
            kind=trace.SpanKind.CONSUMER,
            start_time=appended,
            attributes={
                "lanes.job_id": event.job_id,
                "lanes.lane": self.lane,
                "lanes.model": engine.name,
                "lanes.version": engine.version,
                "lanes.attempt": event.attempt,
                "lanes.tenant": event.spec.tenant or "",
                "lanes.stage": self.stage_of(event),
                "lanes.instance": self.instance,
                "messaging.kafka.partition": record.partition,
                "messaging.kafka.offset": record.offset,
            },
        )
        tracer.start_span(
            "queue wait", context=trace.set_span_in_context(span), start_time=appended
        ).end()
        return span

    async def _admit(self, tp: TopicPartition, record: Any) -> None:
        bind_record(record, self.group)
        self.tracker.add(tp, record.offset)
        try:
            event = parse_job_event(record.value or b"")
            if not isinstance(event, GenerationRouted):
                raise PoisonEvent(f"lane worker expects generation.routed, got {event.type}")
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
            uri = event.init_artifact_uri
            try:  # a store that is away is waited out, within a bound
                init_image = await wait_out_outage(
                    lambda: self.store.open_image(uri),
                    bound_s=self.settings.storage.outage_wait_s,
                    executor=self.codec,
                    what="draft read",
                )
            except (ArtifactError, ArtifactUnavailable) as exc:  # the job fails with the reason
                log.warning("init_artifact_unreadable", error=str(exc))
                self.metrics.failures.labels(*self.labels, "unreadable_artifact").inc()
                await self._send(
                    [self._failed_output(event, f"cannot refine: {exc}", reason="artifact")]
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
            negative_prompt=event.spec.negative_prompt,
        )
        engine = self.models.engine_for(event.job_id, event.stable_only)
        self.holding.add(task_key(event))
        self._hold(+1)
        self.batcher.put(
            (engine.name, engine.version, batch_key(request)),
            RenderTask(
                tp,
                record.offset,
                event,
                request,
                datetime.now(UTC),
                engine,
                self._job_span(record, event, engine),
            ),
        )
