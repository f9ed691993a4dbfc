"""Intake of a fetched record: parse (poison to the DLQ), skip duplicates and canceled
jobs, read a refine pass's init image, then hold the job and hand it to the batcher."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import TopicPartition
from opentelemetry import trace

from consumers.lane_worker.batcher import MicroBatcher
from consumers.lane_worker.commits import Commits
from consumers.lane_worker.lane import LaneContext
from consumers.lane_worker.models import LaneModels
from consumers.lane_worker.outbox import Outbox
from consumers.lane_worker.outcomes import Outcomes
from consumers.lane_worker.slots import Slots
from consumers.lane_worker.tasks import BatchKey, RenderTask, task_key
from consumers.machinery.loop import Output, bind_record, dead_letter
from producers.tracing import context_from_headers
from schemas.events import GenerationRouted, parse_job_event
from schemas.exceptions import PoisonEvent
from services.engines.engine import Engine, RenderRequest, batch_key
from services.storage.artifacts import ArtifactError, ArtifactStore, ArtifactUnavailable
from services.storage.outage import wait_out_outage

__all__ = ["Intake"]

log = structlog.get_logger("lanes.worker")


@dataclass
class Intake:
    lane: LaneContext
    models: LaneModels
    store: ArtifactStore
    codec: Executor
    slots: Slots
    commits: Commits
    batcher: MicroBatcher[BatchKey, RenderTask]
    outbox: Outbox
    outcomes: Outcomes

    def already_done(self, event: GenerationRouted) -> bool:
        """Held or rendered here, or the job is past this attempt's pass."""
        if self.slots.seen(task_key(event)):
            return True
        job = self.lane.jobs_view.get(event.job_id)
        if job is None:
            return False
        return (
            job.terminal
            or job.attempt > event.attempt
            or (event.attempt, self.lane.stage_of(event)) in job.rendered
        )

    async def admit(self, tp: TopicPartition, record: Any) -> None:
        bind_record(record, self.lane.group)
        self.commits.add(tp, record.offset)
        try:
            event = parse_job_event(record.value or b"")
            if not isinstance(event, GenerationRouted):
                raise PoisonEvent(f"lane worker expects generation.routed, got {event.type}")
        except Exception as exc:  # noqa: BLE001 - a bad record goes to the DLQ
            log.warning("event_dead_lettered", error=str(exc)[:300])
            dlq = dead_letter(record, exc, self.lane.group, self.lane.topics.dlq)
            await self._settle(tp, record.offset, [dlq])
            return
        if self.already_done(event):
            log.info("duplicate_skipped", attempt=event.attempt)
            self.lane.metrics.duplicates.labels(*self.models.labels).inc()
            await self._settle(tp, record.offset, [])
            return
        if self.lane.canceled(event.job_id):
            log.info("canceled_job_skipped")
            await self._settle(tp, record.offset, [self.outcomes.canceled_output(event, None)])
            return
        engine = self.models.engine_for(event.job_id, event.stable_only)
        if event.mask_artifact_uri is not None and not engine.inpaints:
            failed = self.outcomes.failed_output(
                event,
                f"cannot inpaint: lane {self.lane.name!r} renders on {engine.provider} "
                f"({engine.name}), which takes no mask",
                reason="invalid",
            )
            await self._settle(tp, record.offset, [failed])
            return
        try:  # a store that is away is waited out, within a bound
            init_image = await self._read_image(event.init_artifact_uri, "draft read")
            mask = await self._read_image(event.mask_artifact_uri, "mask read")
        except (ArtifactError, ArtifactUnavailable) as exc:  # the job fails with the reason
            log.warning("init_artifact_unreadable", error=str(exc))
            self.lane.metrics.failures.labels(*self.models.labels, "unreadable_artifact").inc()
            failed = self.outcomes.failed_output(event, f"cannot refine: {exc}", reason="artifact")
            await self._settle(tp, record.offset, [failed])
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
            mask_image=mask,
        )
        self.slots.hold(task_key(event))
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

    async def _read_image(self, uri: str | None, what: str) -> Any:
        """An image from the store (None for no ``uri``); an outage is waited out."""
        if uri is None:
            return None
        return await wait_out_outage(
            lambda: self.store.open_image(uri),
            bound_s=self.lane.settings.storage.outage_wait_s,
            executor=self.codec,
            what=what,
        )

    async def _settle(self, tp: TopicPartition, offset: int, outputs: list[Output]) -> None:
        """A record that ends at intake: its outputs acknowledged, then its offset done."""
        if outputs:
            await self.outbox.send(outputs)
        await self.commits.finish(tp, offset)

    def _job_span(self, record: Any, event: GenerationRouted, engine: Engine) -> trace.Span:
        """The job's span in this worker, from the record's append (its wait in the lane's
        queue is the first child) under the hop that routed it."""
        appended = int(record.timestamp) * 1_000_000  # ms -> ns
        tracer = trace.get_tracer("lanes")
        span = tracer.start_span(
            f"lanes-worker-{self.lane.name} job",
            context=context_from_headers(record.headers, event.job_id),
            kind=trace.SpanKind.CONSUMER,
            start_time=appended,
            attributes={
                "lanes.job_id": event.job_id,
                "lanes.lane": self.lane.name,
                "lanes.model": engine.name,
                "lanes.version": engine.version,
                "lanes.attempt": event.attempt,
                "lanes.tenant": event.spec.tenant or "",
                "lanes.stage": self.lane.stage_of(event),
                "lanes.instance": self.lane.instance,
                "messaging.kafka.partition": record.partition,
                "messaging.kafka.offset": record.offset,
            },
        )
        tracer.start_span(
            "queue wait", context=trace.set_span_in_context(span), start_time=appended
        ).end()
        return span
