"""The engine call for one batch: on the device's thread (taking turns with the process's
other workers) or, for a hosted engine, over HTTP; a batch split on out-of-memory; each
denoising step reported as ``render.progress`` (with latent previews where the lane asks,
and the partial images a job asked for)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import trace

from consumers.lane_worker.device_turns import DeviceTurns
from consumers.lane_worker.gpu_process import Turn
from consumers.lane_worker.lane import LaneContext
from consumers.lane_worker.models import LaneModels
from consumers.lane_worker.outbox import Outbox
from consumers.lane_worker.outcomes import Result
from consumers.lane_worker.partials import PartialImages
from consumers.lane_worker.tasks import RenderTask
from consumers.machinery.loop import Output
from producers.tracing import headers_of_span, trace_id_of
from schemas.events import PartialImage, RenderProgress, RenderStarted
from services.engines.engine import RenderContext, StepHook
from services.engines.memory import (
    OutOfMemory,
    free_cached_memory,
    peak_memory_bytes,
)
from services.engines.previews import latent_previews
from services.exceptions import Interrupted, ProviderError

__all__ = ["Renderer", "child_span"]

log = structlog.get_logger("lanes.worker")


@dataclass
class Renderer:
    lane: LaneContext
    models: LaneModels
    device: DeviceTurns  # the GPU's turns, shared with the process's other workers
    gpu: Executor  # the GPU's one thread
    turn: Turn
    outbox: Outbox
    partials: PartialImages

    async def announce(self, batch: list[RenderTask]) -> list[asyncio.Future[Any]]:
        """``render.started`` for each job, unawaited: the futures resolve on the acks (the
        outcome is published after them)."""
        started = [
            self._to_renders(
                t,
                RenderStarted,
                model=t.engine.name,
                version=t.engine.version,
                instance=self.lane.instance,
            )
            for t in batch
        ]
        return await self.outbox.enqueue(started)

    def _to_renders(self, t: RenderTask, event_type: Any, **fields: Any) -> Output:
        """One of this worker's events about a held job, for ``lanes.renders``."""
        event = event_type(
            job_id=t.event.job_id,
            producer=self.lane.producer,
            lane=self.lane.name,
            attempt=t.event.attempt,
            **fields,
        )
        return Output(
            self.lane.topics.renders, t.event.job_id, event.to_bytes(), headers_of_span(t.span)
        )

    async def render(self, batch: list[RenderTask]) -> list[Result]:
        """Render, splitting the batch on out-of-memory; a job that does not fit alone gets
        its OutOfMemory back."""
        loop = asyncio.get_running_loop()
        engine = batch[0].engine
        labels = self.lane.labels_of(engine)
        reqs = [t.request for t in batch]

        def canceled() -> bool:
            return all(self.lane.canceled(t.event.job_id) for t in batch)

        def on_device(fn: Any) -> Any:
            # A batch runs between the steps of a less urgent peer's render in progress; a
            # render lets more urgent peers' batches in between its steps.
            return self.device.render(
                self.gpu,
                fn,
                priority=self.turn.urgency,
                preempt=self.turn.may_preempt(),
                preemptible=self.turn.preemptible(),
            )

        # A lane with no fallback waits out a refusing provider; a canary never does (its
        # job goes back to the stable version instead).
        wait = self.lane.spec.fallback_lane is None and self.models.is_stable(engine)
        on_step = self._step_reporter(batch) if engine.on_device else None
        spans = [
            child_span(
                t,
                "render" if engine.on_device else "provider call",
                time.time_ns(),
                batch_size=len(batch),
                steps=t.request.steps,
                width=t.request.width,
                height=t.request.height,
                model=engine.name,
                version=engine.version,
            )
            for t in batch
        ]
        try:
            outputs = await engine.generate(
                reqs, RenderContext(canceled, on_device, wait, on_step=on_step)
            )
            for span, out in zip(spans, outputs, strict=False):
                if out.preempted_ms:  # a more urgent (spilled) batch ran between its steps
                    span.add_event("spill preemption", {"paused_ms": out.preempted_ms})
            self.lane.metrics.batch_size.labels(*labels).observe(len(batch))
            trace_id = trace_id_of(batch[0].span)
            self.lane.metrics.inference.labels(*labels).observe(
                outputs[0].inference_ms / 1000, {"trace_id": trace_id} if trace_id else None
            )
            return list(zip(batch, outputs, strict=True))
        except Interrupted as exc:  # every job of the batch was canceled
            log.info("render_interrupted", batch=len(batch), step=exc.step)
            for span in spans:
                span.add_event("canceled", {"step": exc.step})
            return [(t, exc) for t in batch]
        except ProviderError as exc:  # the job's outcome says what the provider meant
            log.warning(
                "provider_refused",
                job_id=batch[0].event.job_id,
                model=engine.name,
                reason=exc.reason,
                error=str(exc)[:300],
            )
            return [(t, exc) for t in batch]
        except OutOfMemory as exc:
            for span in spans:
                span.add_event("out of memory", {"batch_size": len(batch)})
            self.lane.metrics.ooms.labels(*labels).inc()
            await loop.run_in_executor(self.gpu, free_cached_memory)
            log.warning("out_of_memory", batch=len(batch), error=str(exc)[:300])
            if len(batch) == 1:
                return [(batch[0], exc)]
            half = len(batch) // 2
            return await self.render(batch[:half]) + await self.render(batch[half:])
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
            for span in spans:
                span.end()
            if engine.on_device:  # a hosted engine holds no memory here
                self.lane.metrics.peak_memory.labels(*labels, engine.device).set(
                    peak_memory_bytes(engine.device)
                )

    def _step_reporter(self, batch: list[RenderTask]) -> StepHook:
        """Each job's denoising step as ``render.progress``: the first, the last, and at most
        one every ``progress_interval_s`` between; a preview every ``preview_every`` steps
        where the lane asks. Called on the GPU thread; published from the loop, unawaited
        (progress is best effort: a lost one is overtaken by the next)."""
        loop = asyncio.get_running_loop()
        every = self.lane.spec.preview_every
        interval = self.lane.settings.worker.progress_interval_s
        last = [0.0]

        def hook(step: int, total: int, latents: Any) -> None:
            partials = self.partials.take(batch, step, total, latents)
            now = time.monotonic()
            wanted = any(partials)
            if not wanted and step != 1 and step < total and now - last[0] < interval:
                return
            last[0] = now
            previews: list[str | None] = [None] * len(batch)
            if every and (step % every == 0 or step >= total):
                try:
                    previews = latent_previews(latents) or previews
                except Exception as exc:  # noqa: BLE001 - a preview never fails a render
                    log.warning("preview_failed", error=str(exc)[:200])
            loop.call_soon_threadsafe(self._report_progress, batch, step, total, previews, partials)

        return hook

    def _report_progress(
        self,
        batch: list[RenderTask],
        step: int,
        total: int,
        previews: list[str | None],
        partials: list[PartialImage | None],
    ) -> None:
        for t in batch:  # the denoising steps, as events of the job's span
            t.span.add_event("denoising step", {"step": min(step, total), "steps": total})
        outputs = [
            self._to_renders(
                t,
                RenderProgress,
                stage=self.lane.stage_of(t.event),
                step=min(step, total),
                steps=total,
                preview=preview,
                partial=partial,
            )
            for t, preview, partial in zip(batch, previews, partials, strict=False)
        ]
        sent = asyncio.ensure_future(self.outbox.enqueue(outputs))
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())


def child_span(task: RenderTask, name: str, start_ns: int, **attrs: object) -> trace.Span:
    """A span under the job's span in this worker, started at ``start_ns``."""
    return trace.get_tracer("lanes").start_span(
        name,
        context=trace.set_span_in_context(task.span),
        start_time=start_ns,
        attributes={f"lanes.{k}": v for k, v in attrs.items()},  # type: ignore[misc]
    )
