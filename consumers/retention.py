"""Retention, in the jobs consumer's process: finished jobs older than
``LANES_RETENTION_DAYS`` lose their images (the artifact store) and their record (a
tombstone on ``lanes.jobs``, which compaction then drops and every view deletes).

The sweep reads the member's own state file by its ``finished`` index, so one pass costs
the jobs that expired, not the jobs kept. Images go first, then the tombstone, then the
row: a crash between steps leaves the job for the next sweep, and each step is idempotent.
The webhook dispatcher drops its delivery records when it reads the tombstone. A job's
URLs (the gateway's routes) stop working with its record: none outlives retention.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter

from schemas.events import utcnow
from schemas.topics import Topics
from services.config.settings import Settings
from services.domain.job_index import JobIndex
from services.storage.artifacts import ArtifactError, ArtifactStore, ArtifactUnavailable

__all__ = ["RetentionSweeper"]

log = structlog.get_logger("lanes.retention")


class RetentionSweeper:
    def __init__(
        self,
        settings: Settings,
        index: JobIndex,
        store: ArtifactStore,
        producer: AIOKafkaProducer,
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        self.producer = producer
        self.topic = Topics(settings.topic_prefix).jobs
        self.expired = Counter(
            "lanes_jobs_expired_total", "Finished jobs deleted by retention", registry=registry
        )
        self.failures = Counter(
            "lanes_retention_failures_total", "Retention deletes to try again", registry=registry
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                while await self.sweep() and not stop.is_set():
                    pass
            except Exception as exc:  # noqa: BLE001 - the broker or the store is down: later
                self.failures.inc()
                log.warning("retention_sweep_failed", error=str(exc)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.storage.retention_sweep_s)

    async def sweep(self, batch: int = 200) -> int:
        """Delete one batch of expired jobs; return how many."""
        cutoff = utcnow() - timedelta(days=self.settings.storage.retention_days)
        jobs = self.index.finished_before(cutoff, batch)
        done = 0
        for job in jobs:
            try:
                images = await asyncio.to_thread(self.store.delete_job, job.job_id)
            except (ArtifactError, ArtifactUnavailable) as exc:
                self.failures.inc()
                log.warning("retention_images_kept", job_id=job.job_id, error=str(exc)[:300])
                continue
            await self.producer.send_and_wait(self.topic, value=None, key=job.job_id.encode())
            self.index.delete(job.job_id)
            self.expired.inc()
            done += 1
            log.info("job_expired", job_id=job.job_id, images=images, finished_at=job.finished_at)
        return done
