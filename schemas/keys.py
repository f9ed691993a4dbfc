"""API keys as ``lanes.keys`` holds them (compacted, key = key id).

A key is ``lanes_<key id>_<secret>``; the topic holds its SHA-256 hash, never the secret.
Revoking republishes the record with ``revoked`` set, so every gateway replica that
follows the topic refuses the key within its poll interval.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["ApiKeyRecord", "Scope", "SCOPES"]

Scope = Literal["generations:write", "generations:read", "admin"]
SCOPES: tuple[Scope, ...] = ("generations:write", "generations:read", "admin")


class ApiKeyRecord(BaseModel):
    key_id: str = Field(pattern=r"^[a-z0-9]{12}$")
    tenant: str = Field(min_length=1, max_length=64)
    scopes: list[Scope]
    name: str = Field("", max_length=200)
    created_at: datetime
    expires_at: datetime | None = None
    revoked: bool = False
    revoked_at: datetime | None = None
    # hex SHA-256 of the whole key string: the secret has 238 bits of entropy, so a plain
    # hash is enough (no salt or slow KDF needed, as for GitHub's and Stripe's tokens).
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
