"""Rendering on the GPU thread: take turns with the process's other workers, split a
batch on out-of-memory, and finish each batch's jobs once rendered."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry import trace

from consumers.lane_worker.tasks import RenderTask, labels_of, task_key
from consumers.machinery.loop import Output
from producers.tracing import headers_of_span, trace_id_of
from schemas.events import RenderProgress, RenderStarted
from services.engines.engine import RenderContext, RenderOutput, StepHook
from services.engines.memory import (
    OutOfMemory,
    free_cached_memory,
    peak_memory_bytes,
)
from services.engines.previews import latent_previews
from services.exceptions import Interrupted, ProviderError

__all__ = ["Rendering"]

log = structlog.get_logger("lanes.worker")


class Rendering:
    """Part of ``LaneWorker`` (a mixin, one concern of the class); see the module doc."""

    # ---- rendering ---------------------------------------------------------------------

    async def _gpu_loop(self) -> None:
        while True:
            batch = await self.batcher.next_batch()
            if batch[0].engine.hosted:  # an HTTP call: no GPU turn, many in flight
                self._spawn(self._call_provider(batch), name="provider-call")
                continue
            waiting = time.time_ns()
            async with self.device.turn(self.priority):  # the GPU is shared with any guest
                for task in batch:  # the wait for this worker's turn on the device
                    _child(task, "gpu turn wait", waiting).end()
                started_at = datetime.now(UTC)
                # Progress events are not waited for here (the render starts at once);
                # _finish awaits their acks before it publishes the outcome.
                started = await self._enqueue(self._started(batch))
                results = await self._render_fitting(batch)
            self._spawn(self._finish(results, started_at, started), name="finish")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)

    async def _call_provider(self, batch: list[RenderTask]) -> None:
        """A hosted engine's batch (one job): the call (waiting out any throttle), then its
        outcome, on a task of its own, so one worker has up to its cap calls in flight."""
        started_at = datetime.now(UTC)
        try:
            started = await self._enqueue(self._started(batch))
            results = await self._render_fitting(batch)
        except asyncio.CancelledError:  # a drain's deadline passed while it waited out a
            for t in batch:  # throttle: uncommitted (redelivered), no longer held here
                self.holding.discard(task_key(t.event))
                self._hold(-1)
            raise
        await self._finish(results, started_at, started)

    def _to_renders(self, t: RenderTask, event_type: Any, **fields: Any) -> Output:
        """One of this worker's events about a held job, for ``lanes.renders``."""
        event = event_type(
            job_id=t.event.job_id,
            producer=f"lanes-worker-{self.lane}",
            lane=self.lane,
            attempt=t.event.attempt,
            **fields,
        )
        return Output(
            self.topics.renders, t.event.job_id, event.to_bytes(), headers_of_span(t.span)
        )

    def _started(self, batch: list[RenderTask]) -> list[Output]:
        return [
            self._to_renders(
                t,
                RenderStarted,
                model=t.engine.name,
                version=t.engine.version,
                instance=self.instance,
            )
            for t in batch
        ]

    async def _render_fitting(
        self, batch: list[RenderTask]
    ) -> list[tuple[RenderTask, RenderOutput | Exception]]:
        """Render, splitting the batch on out-of-memory; a job that does not fit alone gets
        its OutOfMemory back."""
        loop = asyncio.get_running_loop()
        engine = batch[0].engine
        labels = labels_of(self.lane, engine)
        reqs = [t.request for t in batch]

        def canceled() -> bool:
            return all(self._canceled(t.event.job_id) for t in batch)

        def on_device(fn: Any) -> Any:
            # A batch runs between the steps of a less urgent peer's render in progress; a
            # render lets more urgent peers' batches in between its steps.
            return self.device.render(
                self.gpu,
                fn,
                priority=self.priority,
                preempt=any(p.priority > self.priority for p in self.peers),
                preemptible=any(p.priority < self.priority for p in self.peers),
            )

        # A lane with no fallback waits out a refusing provider; a canary never does (its
        # job goes back to the stable version instead).
        wait = self.spec.fallback_lane is None and self.models.is_stable(engine)
        on_step = None if engine.hosted else self._step_reporter(batch)
        spans = [
            _child(
                t,
                "provider call" if engine.hosted else "render",
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
            self.metrics.batch_size.labels(*labels).observe(len(batch))
            trace_id = trace_id_of(batch[0].span)
            self.metrics.inference.labels(*labels).observe(
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
            for span in spans:
                span.end()
            if not engine.hosted:  # a hosted engine holds no memory here
                self.metrics.peak_memory.labels(*labels, engine.device).set(
                    peak_memory_bytes(engine.device)
                )

    def _step_reporter(self, batch: list[RenderTask]) -> StepHook:
        """Each job's denoising step as ``render.progress``: the first, the last, and at most
        one every ``progress_interval_s`` between; a preview every ``preview_every`` steps
        where the lane asks. Called on the GPU thread; published from the loop, unawaited
        (progress is best effort: a lost one is overtaken by the next)."""
        loop = asyncio.get_running_loop()
        every = self.spec.preview_every
        interval = self.settings.worker.progress_interval_s
        last = [0.0]

        def hook(step: int, total: int, latents: Any) -> None:
            now = time.monotonic()
            if step != 1 and step < total and now - last[0] < interval:
                return
            last[0] = now
            previews: list[str | None] = [None] * len(batch)
            if every and (step % every == 0 or step >= total):
                try:
                    previews = latent_previews(latents) or previews
                except Exception as exc:  # noqa: BLE001 - a preview never fails a render
                    log.warning("preview_failed", error=str(exc)[:200])
            loop.call_soon_threadsafe(self._report_progress, batch, step, total, previews)

        return hook

    def _report_progress(
        self, batch: list[RenderTask], step: int, total: int, previews: list[str | None]
    ) -> None:
        for t in batch:  # the denoising steps, as events of the job's span
            t.span.add_event("denoising step", {"step": min(step, total), "steps": total})
        outputs = [
            self._to_renders(
                t,
                RenderProgress,
                stage=self.stage_of(t.event),
                step=min(step, total),
                steps=total,
                preview=preview,
            )
            for t, preview in zip(batch, previews, strict=False)
        ]
        sent = asyncio.ensure_future(self._enqueue(outputs))
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())

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
            await asyncio.gather(*(self._traced_outcome(t, r, started_at) for t, r in results))
        except Exception as exc:  # noqa: BLE001
            log.error("publish_failed", error=str(exc)[:500])
            self.fatal = exc
            self.slot_freed.set()
            for task, _ in results:
                task.span.set_status(trace.StatusCode.ERROR, "publish failed")
                task.span.end()
            return
        for task, _ in results:
            self.tracker.done(task.tp, task.offset)
            self._release(task, rendered=True)
            task.span.end()
        await self._commit()

    async def _traced_outcome(
        self, task: RenderTask, result: RenderOutput | Exception, started_at: datetime
    ) -> None:
        """The outcome's storing and publishing, as a span of the job's (its outputs carry
        that span's context on to the next hop)."""
        with (
            trace.use_span(task.span, end_on_exit=False),
            trace.get_tracer("lanes").start_as_current_span("store and publish"),
        ):
            await self._publish_outcome(task, result, started_at)


def _child(task: RenderTask, name: str, start_ns: int, **attrs: object) -> trace.Span:
    """A span under the job's span in this worker, started at ``start_ns``."""
    return trace.get_tracer("lanes").start_span(
        name,
        context=trace.set_span_in_context(task.span),
        start_time=start_ns,
        attributes={f"lanes.{k}": v for k, v in attrs.items()},  # type: ignore[misc]
    )
