"""`lanes webhooks replay`: dead-lettered webhooks back onto the delay topic, due now."""

from __future__ import annotations

from schemas.events import utcnow
from schemas.records import WebhookMessage
from schemas.topics import Topics
from services.config.settings import Settings
from services.kafka.clients import make_producer
from services.kafka.compacted_view import CompactedView

__all__ = ["replay"]


async def replay(settings: Settings, keys: set[str] | None) -> list[str]:
    """Queue the DLQ's latest message per key (all, or those in ``keys``); returns the keys."""
    topics = Topics(settings.topic_prefix)
    dead: CompactedView[WebhookMessage] = CompactedView(
        settings, topics.webhooks_dlq, WebhookMessage.model_validate_json
    )
    await dead.load()
    chosen = {k: m for k, m in dead.items.items() if keys is None or k in keys}
    producer = make_producer(
        settings, client_id="lanes-webhooks-replay", topics=[topics.webhooks_retry]
    )
    await producer.start()
    try:
        for key, msg in chosen.items():
            again = msg.model_copy(update={"attempt": 1, "due_at": utcnow()})
            await producer.send_and_wait(
                topics.webhooks_retry, again.model_dump_json().encode(), key=key.encode()
            )
    finally:
        await producer.stop()
    return sorted(chosen)
