"""`lanes keys create | list | revoke`: records published straight to ``lanes.keys``.

Who may write that topic is the broker's business (only the admin principal holds Write on
it); the secret exists only in what ``create`` returns, never on the topic.
"""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.keys import ApiKeyRecord, Scope
from schemas.topics import Topics
from services.auth.api_keys import new_key
from services.config.settings import Settings
from services.kafka.clients import make_producer
from services.kafka.compacted_view import CompactedView

__all__ = ["create_key", "list_keys", "revoke_key", "UnknownKey"]


class UnknownKey(LookupError):
    pass


async def _publish(settings: Settings, record: ApiKeyRecord) -> None:
    topic = Topics(settings.topic_prefix).keys
    producer = make_producer(settings, client_id="lanes-keys", topics=[topic])
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            record.model_dump_json().encode(),
            key=record.key_id.encode(),
        )
    finally:
        await producer.stop()


async def create_key(
    settings: Settings,
    tenant: str,
    scopes: list[Scope],
    *,
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[str, ApiKeyRecord]:
    """Mint a key, publish its record (acks=all), and return the key string: the only copy."""
    key, record = new_key(tenant, scopes, name=name, expires_at=expires_at)
    await _publish(settings, record)
    return key, record


async def list_keys(settings: Settings) -> list[ApiKeyRecord]:
    view: CompactedView[ApiKeyRecord] = CompactedView(
        settings, Topics(settings.topic_prefix).keys, ApiKeyRecord.model_validate_json
    )
    items = await view.load()
    return sorted(items.values(), key=lambda r: r.created_at)


async def revoke_key(settings: Settings, key_id: str) -> ApiKeyRecord:
    records = {r.key_id: r for r in await list_keys(settings)}
    if key_id not in records:
        raise UnknownKey(f"no key {key_id!r}")
    revoked = records[key_id].model_copy(update={"revoked": True, "revoked_at": datetime.now(UTC)})
    await _publish(settings, revoked)
    return revoked
