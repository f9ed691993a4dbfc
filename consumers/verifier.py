"""Verifier [group lanes-verify]: checks the typography of each delivered render.

For each deliverable render whose job expects text: OCR it and score it against the
expected text. On a failing score, when the route allows it, composite the exact text onto
the image (``services.typography.text.composite_text``) and check again. A final-intent job
that still fails is re-rendered on the route's typography fallback lane, up to
``max_attempts`` renders in all; the job state then delivers the best-scoring image, flagged.
Runs after the render event is published, so it never delays a draft or its webhook.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog
from prometheus_client import CollectorRegistry

from consumers.machinery.loop import MessageContext, Output
from consumers.machinery.rerouting import reroute
from consumers.machinery.runtime import run_consumer
from schemas.control import LaneDesired
from schemas.events import (
    RenderCompleted,
    RenderFailed,
    VerificationCompleted,
    parse_job_event,
)
from schemas.exceptions import PoisonEvent
from schemas.topics import Topics
from services.config.routes import Routes, TypographySpec, load_routes
from services.config.settings import Settings
from services.domain.routing import Job, route
from services.kafka.control_view import ControlView
from services.storage.artifacts import (
    ArtifactError,
    ArtifactStore,
    ArtifactUnavailable,
    open_store,
)
from services.storage.outage import wait_out_outage
from services.typography.text import OcrReader, RepairError, composite_text, text_similarity

__all__ = ["run", "Verifier"]

log = structlog.get_logger("lanes.verifier")


class Verifier:
    def __init__(
        self,
        store: ArtifactStore,
        topics: Topics,
        routes: Routes,
        threshold: float,
        font_path: str | None = None,
        control: Mapping[str, LaneDesired] | None = None,
        outage_wait_s: float = 60.0,
    ) -> None:
        self.store = store
        self.outage_wait_s = outage_wait_s  # an object store that is away: waited this long
        self.topics = topics
        self.routes = routes
        self.control: Mapping[str, LaneDesired] = control if control is not None else {}
        self.threshold = threshold
        self.font_path = font_path
        self.ocr = OcrReader()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocr")

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def policy(self, event: RenderCompleted) -> TypographySpec:
        """The typography policy of the lane that serves the job's intent."""
        if event.spec is None:
            return TypographySpec(repair=False)
        return self.routes.lane_for(event.spec.intent)[1].typography

    def _check(self, event: RenderCompleted, policy: TypographySpec) -> VerificationCompleted:
        """OCR, then repair and OCR again when allowed. Raises ArtifactError if unreadable."""
        expected = event.expected_text or ""
        started = time.perf_counter()
        image = self.store.open_image(event.artifact_uri)
        read = self.ocr.read(image)
        score = text_similarity(expected, read)
        repaired: dict[str, object] = {}
        if score < self.threshold and policy.repair:
            try:
                fixed = composite_text(image, expected, self.font_path)
                uri = self.store.put_png(event.job_id, f"repaired-a{event.attempt}", fixed)
                fixed_read = self.ocr.read(fixed)
                repaired = {
                    "repaired_uri": uri,
                    "repaired_read": fixed_read,
                    "repaired_score": round(text_similarity(expected, fixed_read), 4),
                }
            except RepairError as exc:
                repaired = {"repair_error": f"repair failed: {exc}"}
        return VerificationCompleted(
            job_id=event.job_id,
            producer="lanes-verifier",
            attempt=event.attempt,
            artifact_uri=event.artifact_uri,
            lane=event.lane,
            model=event.model,
            version=event.version,
            expected=expected,
            read=read,
            score=round(score, 4),
            passed=score >= self.threshold,
            threshold=self.threshold,
            ocr_ms=(time.perf_counter() - started) * 1000,
            **repaired,
        )

    async def handle(self, event: object, ctx: MessageContext) -> Sequence[Output]:
        # lanes.renders also carries progress events and cascade drafts: nothing to check.
        if (
            not isinstance(event, RenderCompleted)
            or not event.deliverable
            or not event.expected_text
        ):
            return []
        policy = self.policy(event)
        try:  # a store that is away is waited out, within a bound; then the job fails
            result = await wait_out_outage(
                lambda: self._check(event, policy),
                bound_s=self.outage_wait_s,
                executor=self.executor,
                what="verification read",
            )
        except (ArtifactError, ArtifactUnavailable) as exc:
            log.warning("artifact_unreadable", error=str(exc))
            failed = RenderFailed(
                job_id=event.job_id,
                producer="lanes-verifier",
                lane=event.lane,
                model=event.model,
                version=event.version,
                attempt=event.attempt,
                error=f"cannot verify: {exc}",
            )
            return [Output(self.topics.renders, event.job_id, failed.to_bytes())]
        outputs = []
        if (
            not result.final_passed
            and event.spec is not None
            and event.spec.intent == "final"
            and policy.fallback_lane
            and event.attempt < policy.max_attempts
        ):
            result = result.model_copy(update={"rerouted_to": policy.fallback_lane})
            outputs += self._reroute(event, result, policy.fallback_lane)
        log.info(
            "verified",
            score=result.score,
            passed=result.passed,
            read=result.read,
            repaired_score=result.repaired_score,
            rerouted_to=result.rerouted_to,
        )
        return [Output(self.topics.verifications, event.job_id, result.to_bytes()), *outputs]

    def _reroute(
        self, event: RenderCompleted, result: VerificationCompleted, lane: str
    ) -> list[Output]:
        if event.spec is None or event.requested_at is None:
            raise PoisonEvent("render.completed without its request: cannot rerender")
        best = max(result.score, result.repaired_score or 0.0)
        reason = (
            f"typography: best score {best:.2f} < {self.threshold:.2f} on attempt {event.attempt}"
        )
        # Another seed on purpose: the same one would draw the same failing text. The size
        # is the rerender lane's own (its cascade brings it to the delivered size).
        job = Job(
            event.job_id,
            event.spec,
            event.requested_at,
            attempt=event.attempt + 1,
            seed=(event.seed + event.attempt) % 2**32,
        )
        routed = route(self.routes, self.control, job, lane, reason, producer="lanes-verifier")
        return reroute(self.topics, routed, event.lane)


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    registry = registry or CollectorRegistry()
    topics = Topics(settings.topic_prefix)
    control = ControlView(settings, registry)
    store = open_store(settings)
    # An unusable store fails start-up with the reason; one away for now is waited out.
    await wait_out_outage(store.check, bound_s=settings.storage.outage_wait_s, what="store check")
    verifier = Verifier(
        store,
        topics,
        load_routes(settings.routes_file),
        settings.worker.verify_threshold,
        settings.worker.font_path,
        control=control.items,
        outage_wait_s=settings.storage.outage_wait_s,
    )
    await asyncio.get_running_loop().run_in_executor(verifier.executor, verifier.ocr.load)
    following = asyncio.create_task(control.follow(), name="control-view")
    try:
        await run_consumer(
            settings,
            group=settings.groups.verifier,
            topics=[topics.renders],
            parse=parse_job_event,
            handler=verifier.handle,
            stop=stop,
            registry=registry,
        )
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        verifier.close()
