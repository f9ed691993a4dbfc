"""Webhook dispatcher [group lanes-webhooks]: lanes.jobs -> signed POSTs to client URLs.

Each (job, event) is delivered once: outcomes go to the compacted
``lanes.webhooks.deliveries`` topic, which this group reloads on every assignment before it
sends anything, and the offset is committed only after that record is acknowledged. A crash
between the POST and that record can repeat a delivery; it carries the same ``webhook-id``
so receivers deduplicate it, as the Standard Webhooks spec asks.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter

from consumers.loop import MessageContext, Output
from consumers.restoring import RestoringListener
from consumers.runtime import run_consumer
from schemas.events import utcnow
from schemas.records import JobState, WebhookDelivery
from schemas.topics import Topics
from services.compacted_view import CompactedView
from services.settings import Settings
from services.webhooks import WebhookSender, webhook_id

__all__ = ["run", "WebhookDispatcher"]

log = structlog.get_logger("lanes.webhooks")


class WebhookDispatcher(RestoringListener):
    def __init__(self, settings: Settings, topics: Topics, sender: WebhookSender,
                 registry: CollectorRegistry) -> None:
        super().__init__()
        self.topics = topics
        self.sender = sender
        self.deliveries: CompactedView[WebhookDelivery] = CompactedView(
            settings, topics.webhook_deliveries, WebhookDelivery.model_validate_json
        )
        self.sent = Counter("lanes_webhooks_total", "Webhook messages by outcome", ["outcome"],
                            registry=registry)

    async def restore(self, partitions: list[int]) -> None:
        # Delivery records are keyed by job:event, not by job id: reload all partitions.
        await self.deliveries.load()
        log.info("webhook_deliveries_restored", deliveries=len(self.deliveries.items))

    async def handle(self, job: object, ctx: MessageContext) -> Sequence[Output]:
        assert isinstance(job, JobState)
        await self.restored()
        if job.spec is None or job.spec.webhook_url is None:
            return []
        outputs: list[Output] = []
        # Milestones in the order they were reached; each subscribed one is sent once.
        for milestone, _ in sorted(job.milestones.items(), key=lambda kv: kv[1]):
            if milestone not in job.spec.webhook_events:
                continue
            outputs += await self._deliver(job, milestone)
        return outputs

    async def _deliver(self, job: JobState, milestone: str) -> list[Output]:
        assert job.spec is not None and job.spec.webhook_url is not None
        key = f"{job.job_id}:{milestone}"
        if key in self.deliveries.items:
            return []
        msg_id = webhook_id(job.job_id, milestone)
        url = str(job.spec.webhook_url)
        payload = {"type": f"generation.{milestone}", "timestamp": utcnow().isoformat(),
                   "data": job.public()}
        result = await self.sender.deliver(url, msg_id, payload)
        self.sent.labels(result.outcome).inc()
        record = WebhookDelivery(
            job_id=job.job_id, event=milestone, webhook_id=msg_id, url=url,
            outcome=result.outcome, status_code=result.status_code, attempts=result.attempts,
            error=result.error,
        )
        self.deliveries.items[key] = record
        log.info("webhook_" + result.outcome, webhook_event=milestone, attempts=result.attempts,
                 status_code=result.status_code, error=result.error)
        body = record.model_dump_json().encode()
        outputs = [Output(self.topics.webhook_deliveries, key, body)]
        if result.outcome != "delivered":
            outputs.append(Output(self.topics.webhooks_dlq, key, body))
        return outputs


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    topics = Topics(settings.topic_prefix)
    registry = CollectorRegistry()
    sender = WebhookSender(
        settings.webhook_secret.get_secret_value(), settings.webhook_allowed_hosts,
        timeout_s=settings.webhook_timeout_s, max_attempts=settings.webhook_max_attempts,
        backoff_s=settings.webhook_backoff_s,
    )
    dispatcher = WebhookDispatcher(settings, topics, sender, registry)
    try:
        await run_consumer(
            settings, name="webhooks", topics=[topics.jobs],
            parse=JobState.model_validate_json, handler=dispatcher.handle,
            registry=registry, stop=stop, listener=dispatcher,
        )
    finally:
        await sender.aclose()
