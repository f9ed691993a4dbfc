"""Verifier [group lanes-verify]: OCR each render that must show text; publish the score."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import structlog

from consumers.loop import MessageContext, Output
from consumers.runtime import run_consumer
from schemas.events import RenderCompleted, VerificationCompleted, parse_job_event
from schemas.topics import Topics
from services.artifacts import ArtifactError, LocalArtifactStore
from services.settings import Settings
from services.typography import OcrReader, text_similarity

__all__ = ["run", "Verifier"]

log = structlog.get_logger("lanes.verifier")


class Verifier:
    def __init__(self, store: LocalArtifactStore, topics: Topics, threshold: float) -> None:
        self.store = store
        self.topics = topics
        self.threshold = threshold
        self.ocr = OcrReader()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocr")

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def _check(self, event: RenderCompleted) -> VerificationCompleted:
        expected = event.expected_text or ""
        started = time.perf_counter()
        error: str | None = None
        try:
            read = self.ocr.read(self.store.open_image(event.artifact_uri))
        except ArtifactError as exc:
            read, error = "", str(exc)
        score = 0.0 if error else text_similarity(expected, read)
        return VerificationCompleted(
            job_id=event.job_id, producer="lanes-verifier", artifact_uri=event.artifact_uri,
            expected=expected, read=read, score=round(score, 4),
            passed=error is None and score >= self.threshold, threshold=self.threshold,
            ocr_ms=(time.perf_counter() - started) * 1000, error=error,
        )

    async def handle(self, event: object, ctx: MessageContext) -> Sequence[Output]:
        # lanes.renders also carries render.started/failed: nothing to verify there.
        if not isinstance(event, RenderCompleted) or not event.expected_text:
            return []
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, self._check, event)
        log.info("verified", score=result.score, passed=result.passed, read=result.read)
        return [Output(self.topics.verifications, event.job_id, result.to_bytes())]


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    topics = Topics(settings.topic_prefix)
    verifier = Verifier(LocalArtifactStore(settings.artifacts_path), topics, settings.verify_threshold)
    await asyncio.get_running_loop().run_in_executor(verifier.executor, verifier.ocr.load)
    try:
        await run_consumer(
            settings, name="verify", topics=[topics.renders], parse=parse_job_event,
            handler=verifier.handle, stop=stop,
        )
    finally:
        verifier.close()
