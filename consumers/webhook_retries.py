"""Webhook retries [group lanes-webhooks-retry]: the delay topic ``lanes.webhooks.retry``.

Each record is a webhook message due at ``due_at`` (``consumers.machinery.delayed`` holds it until
then without sleeping). An attempt's outcome (delivery record, next attempt or DLQ) is
acknowledged before the offset is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from consumers.machinery.delayed import run_delayed
from consumers.machinery.loop import Output
from consumers.webhooks import WebhookMetrics, after_attempt, make_sender, traced_attempt
from schemas.records import WebhookMessage
from schemas.topics import Topics
from services.config.settings import Settings

__all__ = ["run"]


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    registry = registry or CollectorRegistry()
    metrics = WebhookMetrics(registry)
    sender = make_sender(settings)

    async def attempt(msg: WebhookMessage) -> Sequence[Output]:
        result = await traced_attempt(sender, msg)
        return after_attempt(settings, msg, result, metrics)

    try:
        await run_delayed(
            settings,
            group=settings.groups.webhook_retries,
            topic=Topics(settings.topic_prefix).webhooks_retry,
            parse=WebhookMessage.model_validate_json,
            due=lambda m: m.due_at,
            handle=attempt,
            stop=stop,
            registry=registry,
        )
    finally:
        await sender.aclose()
