"""Webhook dispatcher [group lanes-webhooks]: lanes.jobs -> signed POSTs to client URLs.

Each (job, event) is delivered once: its state goes to the compacted
``lanes.webhooks.deliveries`` topic and to this member's SQLite view of it, which catches up
from its stored offsets on every assignment before anything is sent, and the offset is
committed only after that record is acknowledged. A crash
between the POST and that record can repeat a delivery; it carries the same ``webhook-id``
so receivers deduplicate it, as the Standard Webhooks spec asks.

The first attempt is made here; a failed one is scheduled on the delay topic
``lanes.webhooks.retry`` (``consumers.webhook_retries`` sends it when due), so this
consumer never sleeps. After the last attempt the message goes to ``lanes.webhooks.dlq``.

When retention deletes a job (a tombstone on ``lanes.jobs``), its delivery records are
deleted too (tombstones on ``lanes.webhooks.deliveries``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import timedelta
from urllib.parse import urlsplit

import structlog
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter

from consumers.machinery.loop import MessageContext, Output, Tombstone
from consumers.machinery.restoring import RestoringListener
from consumers.machinery.runtime import run_consumer
from schemas.events import utcnow
from schemas.exceptions import PoisonEvent
from schemas.records import JobState, WebhookDelivery, WebhookMessage
from schemas.topics import Topics
from services.auth.url_signing import url_signer
from services.config.settings import Settings
from services.kafka.sqlite_view import SqliteView
from services.webhooks.delivery import AttemptResult, WebhookSender, backoff_delay, webhook_id

__all__ = ["run", "WebhookDispatcher", "make_sender", "after_attempt", "WebhookMetrics"]

log = structlog.get_logger("lanes.webhooks")


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "lanes_webhook_attempts_total", "Webhook POSTs by result", ["result"], registry=registry
        )


def make_sender(settings: Settings) -> WebhookSender:
    return WebhookSender(
        settings.signing_keys(),
        settings.webhooks.allowed_hosts,
        timeout_s=settings.webhooks.timeout_s,
        max_body_bytes=settings.webhooks.max_body_bytes,
        prepare=url_signer(settings).sign_webhook_body,
    )


async def traced_attempt(sender: WebhookSender, msg: WebhookMessage) -> AttemptResult:
    """One POST to the client's URL as a span of the job's trace, with its status code (the
    host only: a URL's path or query may carry the client's secrets)."""
    with trace.get_tracer("lanes").start_as_current_span(
        "webhook attempt",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "lanes.job_id": msg.job_id,
            "lanes.webhook.event": msg.event,
            "lanes.webhook.attempt": msg.attempt,
            "server.address": urlsplit(msg.url).hostname or "",
        },
    ) as span:
        result = await sender.attempt(msg.url, msg.webhook_id, msg.body)
        span.set_attribute("lanes.webhook.outcome", result.outcome)
        if result.status_code is not None:
            span.set_attribute("http.response.status_code", result.status_code)
        if result.outcome != "delivered":
            span.set_status(trace.StatusCode.ERROR, result.outcome)
        return result


def after_attempt(
    settings: Settings, msg: WebhookMessage, result: AttemptResult, metrics: WebhookMetrics
) -> list[Output]:
    """The delivery record, plus the next attempt on the delay topic or the DLQ record."""
    topics = Topics(settings.topic_prefix)
    metrics.attempts.labels(result.outcome).inc()
    record = WebhookDelivery(
        job_id=msg.job_id,
        event=msg.event,
        webhook_id=msg.webhook_id,
        url=msg.url,
        outcome="delivered",
        status_code=result.status_code,
        attempts=msg.attempt,
        error=result.error,
    )
    outputs: list[Output] = []
    if result.outcome == "retry" and msg.attempt < settings.webhooks.max_attempts:
        delay = backoff_delay(
            msg.attempt,
            settings.webhooks.backoff_s,
            settings.webhooks.max_delay_s,
            result.retry_after_s,
        )
        nxt = msg.model_copy(
            update={
                "attempt": msg.attempt + 1,
                "due_at": utcnow() + timedelta(seconds=delay),
                "last_status": result.status_code,
                "last_error": result.error,
            }
        )
        record = record.model_copy(update={"outcome": "retrying", "next_attempt_at": nxt.due_at})
        outputs.append(Output(topics.webhooks_retry, msg.key, nxt.model_dump_json().encode()))
    elif result.outcome != "delivered":
        record = record.model_copy(update={"outcome": "failed"})
        dead = msg.model_copy(
            update={"last_status": result.status_code, "last_error": result.error}
        )
        outputs.append(Output(topics.webhooks_dlq, msg.key, dead.model_dump_json().encode()))
    log.info(
        f"webhook_{record.outcome}",
        webhook_event=msg.event,
        attempt=msg.attempt,
        status_code=result.status_code,
        error=result.error,
        next_attempt_at=record.next_attempt_at.isoformat() if record.next_attempt_at else None,
    )
    return [Output(topics.webhook_deliveries, msg.key, record.model_dump_json().encode()), *outputs]


class WebhookDispatcher(RestoringListener):
    def __init__(
        self, settings: Settings, sender: WebhookSender, registry: CollectorRegistry
    ) -> None:
        super().__init__()
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.sender = sender
        self.deliveries = SqliteView(
            settings,
            self.topics.webhook_deliveries,
            settings.view_path("webhook-deliveries"),
            columns=("job",),
            indexes=(("job",),),
            extract=lambda value: {"job": json.loads(value)["job_id"]},
        )
        self.metrics = WebhookMetrics(registry)

    async def restore(self, partitions: list[int]) -> None:
        # Delivery records are keyed by job:event, not by job id: catch up all partitions.
        applied = await self.deliveries.catch_up()
        log.info("webhook_deliveries_restored", changelog_records=applied)

    async def handle(self, job: object, ctx: MessageContext) -> Sequence[Output]:
        if isinstance(job, Tombstone):
            return self._forget(job.key)
        if not isinstance(job, JobState):
            raise PoisonEvent(f"the webhook dispatcher reads job records, got {type(job).__name__}")
        await self.restored()
        if job.spec is None or job.spec.webhook_url is None:
            return []
        url = str(job.spec.webhook_url)
        outputs: list[Output] = []
        # Milestones in the order they were reached; each subscribed one is sent once.
        for milestone, _ in sorted(job.milestones.items(), key=lambda kv: kv[1]):
            if milestone not in job.spec.webhook_events:
                continue
            outputs += await self._deliver(job, milestone, url)
        if "progress" in job.spec.webhook_events and not job.terminal:
            outputs += await self._progress(job, url)
        return outputs

    async def _progress(self, job: JobState, url: str) -> list[Output]:
        """``generation.progress`` at 25, 50 and 75% of a render's steps: the highest mark
        crossed, once (a jump past several sends one); none at 100% (the milestone follows)."""
        p = job.progress
        if p is None or p.step >= p.steps:
            return []
        crossed = [q for q in (25, 50, 75) if p.step * 100 >= q * p.steps]
        if not crossed:
            return []
        return await self._deliver(
            job, f"progress-a{p.attempt}-{p.stage}-{crossed[-1]}", url, kind="progress"
        )

    def _forget(self, job_id: str) -> list[Output]:
        """The job expired: tombstone its delivery records."""
        keys = [k for (k,) in self.deliveries.query("SELECT key FROM rows WHERE job=?", [job_id])]
        self.deliveries.delete_where("job=?", [job_id])
        return [Output(self.topics.webhook_deliveries, key, None) for key in keys]

    async def _deliver(
        self, job: JobState, milestone: str, url: str, kind: str | None = None
    ) -> list[Output]:
        key = f"{job.job_id}:{milestone}"
        if self.deliveries.get(key) is not None:
            return []
        payload = {
            "type": f"generation.{kind or milestone}",
            "timestamp": utcnow().isoformat(),
            "data": job.public(self.settings.public_base_url),
        }
        msg = WebhookMessage(
            job_id=job.job_id,
            event=milestone,
            webhook_id=webhook_id(job.job_id, milestone),
            url=url,
            attempt=1,
            body=json.dumps(payload, separators=(",", ":")),
        )
        result = await traced_attempt(self.sender, msg)
        outputs = after_attempt(self.settings, msg, result, self.metrics)
        self.deliveries.put(key, outputs[0].value or b"")
        return outputs


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    registry = registry or CollectorRegistry()
    sender = make_sender(settings)
    dispatcher = WebhookDispatcher(settings, sender, registry)
    try:
        await run_consumer(
            settings,
            group=settings.groups.webhooks,
            topics=[dispatcher.topics.jobs],
            parse=JobState.model_validate_json,
            handler=dispatcher.handle,
            registry=registry,
            stop=stop,
            listener=dispatcher,
            tombstones=True,
        )
    finally:
        await sender.aclose()
        dispatcher.deliveries.close()
