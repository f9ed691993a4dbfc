"""``lanes.ops`` (contract): an ops command as it travels, signed.

The command's JSON exactly as signed, plus a Standard Webhooks signature over it (id =
command id, timestamp, HMAC-SHA256 with the ops key). ``producers.ops`` signs and verifies.
"""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["SignedCommand"]


class SignedCommand(BaseModel):
    id: str
    timestamp: str
    signature: str
    payload: str  # the OpsCommand JSON exactly as signed

    def headers(self) -> dict[str, str]:
        return {
            "webhook-id": self.id,
            "webhook-timestamp": self.timestamp,
            "webhook-signature": self.signature,
        }
