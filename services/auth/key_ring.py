"""Every gateway replica's view of ``lanes.keys``: followed from the topic (no shared disk),
so a key created or revoked anywhere takes effect here within a poll (~200 ms). A key id
this replica has not seen yet makes it read to the topic's end first (bounded), so a key
works on its first request right after it is minted, wherever that request lands."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from schemas.keys import ApiKeyRecord
from schemas.topics import Topics
from services.auth.api_keys import KEY_PATTERN, Identity, InvalidKey, check_key, parse_bearer
from services.config.settings import Settings
from services.kafka.compacted_view import CompactedView

__all__ = ["KeyRing", "InvalidKey"]


class KeyRing:
    def __init__(self, settings: Settings) -> None:
        self.unknown_key_wait_s = settings.auth.unknown_key_wait_s
        self.view: CompactedView[ApiKeyRecord] = CompactedView(
            settings, Topics(settings.topic_prefix).keys, ApiKeyRecord.model_validate_json
        )

    @property
    def caught_up(self) -> asyncio.Event:
        return self.view.caught_up

    async def follow(self) -> None:
        await self.view.follow()

    def identify(self, key: str, now: datetime | None = None) -> Identity:
        """The identity a key string proves (InvalidKey otherwise)."""
        match = KEY_PATTERN.match(key)
        record = self.view.items.get(match.group(1)) if match else None
        return check_key(key, record, now or datetime.now(UTC))

    async def identify_fresh(self, key: str) -> Identity:
        """``identify``, but a well-formed key whose id this replica has not read yet waits
        for the view to reach the topic's current end (at most ``unknown_key_wait_s``)."""
        match = KEY_PATTERN.match(key)
        if match and match.group(1) not in self.view.items:
            await self.view.sync(self.unknown_key_wait_s)
        return self.identify(key)

    async def authenticate(self, authorization: str | None) -> Identity:
        """The identity an ``Authorization`` header proves (InvalidKey otherwise)."""
        return await self.identify_fresh(parse_bearer(authorization))

    def still_valid(self, key_id: str) -> Identity | None:
        """A signed-in session's key, if it is still live (not revoked, not expired)."""
        record = self.view.items.get(key_id)
        if record is None or record.revoked:
            return None
        if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            return None
        return Identity(record.key_id, record.tenant, frozenset(record.scopes), record.name)
