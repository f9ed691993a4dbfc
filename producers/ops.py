"""Signed ops commands: how `lanes ops ...` talks to the control plane.

A command travels on ``lanes.ops`` (contract) as ``SignedCommand``: the command's JSON plus
a Standard Webhooks signature (id = command id, timestamp, HMAC-SHA256 with the ops key).
The control plane refuses a bad signature, a stale timestamp and a command id it has seen.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel
from standardwebhooks.webhooks import Webhook

from schemas.control import OpsCommand
from schemas.topics import Topics
from services.kafka_clients import make_producer
from services.settings import Settings

__all__ = ["SignedCommand", "sign_command", "verify_command", "publish_command", "ForgedCommand"]


class ForgedCommand(Exception):
    """Signature missing or wrong, or timestamp outside the tolerance."""


class SignedCommand(BaseModel):
    id: str
    timestamp: str
    signature: str
    payload: str  # the OpsCommand JSON exactly as signed

    def headers(self) -> dict[str, str]:
        return {"webhook-id": self.id, "webhook-timestamp": self.timestamp,
                "webhook-signature": self.signature}


def sign_command(command: OpsCommand, key: str, at: datetime | None = None) -> SignedCommand:
    at = at or datetime.now(UTC)
    payload = command.model_dump_json()
    return SignedCommand(id=command.command_id, timestamp=str(int(at.timestamp())),
                         signature=Webhook(key).sign(command.command_id, at, payload),
                         payload=payload)


def verify_command(signed: SignedCommand, key: str) -> OpsCommand:
    """The command, if the signature is right and fresh; raises ForgedCommand otherwise."""
    try:
        Webhook(key).verify(signed.payload, signed.headers())
    except Exception as exc:  # the library raises WebhookVerificationError
        raise ForgedCommand(str(exc) or type(exc).__name__) from exc
    command = OpsCommand.model_validate_json(signed.payload)
    if command.command_id != signed.id:
        raise ForgedCommand("the signed id does not match the command id")
    return command


async def publish_command(settings: Settings, command: OpsCommand) -> SignedCommand:
    signed = sign_command(command, settings.ops_key.get_secret_value())
    producer = make_producer(settings, client_id="lanes-ops")
    await producer.start()
    try:
        await producer.send_and_wait(Topics(settings.topic_prefix).ops,
                                     signed.model_dump_json().encode(), key=command.lane.encode())
    finally:
        await producer.stop()
    return signed
