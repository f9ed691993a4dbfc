"""Signed ops commands: how `lanes ops ...` talks to the control plane.

A command travels on ``lanes.ops`` (contract) as ``SignedCommand``: the command's JSON plus
a Standard Webhooks signature (id = command id, timestamp, HMAC-SHA256 with the ops key).
The control plane refuses a bad signature, a stale timestamp and a command id it has seen.
"""

from __future__ import annotations

from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from producers.exceptions import ForgedCommand
from producers.kafka import make_producer
from producers.settings import ClientSettings
from schemas.control import OpsCommand
from schemas.ops import SignedCommand
from schemas.topics import Topics

__all__ = ["SignedCommand", "sign_command", "verify_command", "publish_command", "ForgedCommand"]


def sign_command(command: OpsCommand, key: str, at: datetime | None = None) -> SignedCommand:
    at = at or datetime.now(UTC)
    payload = command.model_dump_json()
    return SignedCommand(
        id=command.command_id,
        timestamp=str(int(at.timestamp())),
        signature=Webhook(key).sign(command.command_id, at, payload),
        payload=payload,
    )


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


async def publish_command(settings: ClientSettings, command: OpsCommand, key: str) -> SignedCommand:
    """Sign ``command`` with the ops key ``key`` and publish it on ``lanes.ops``."""
    signed = sign_command(command, key)
    topic = Topics(settings.topic_prefix).ops
    producer = make_producer(settings, client_id="lanes-ops", topics=[topic])
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            signed.model_dump_json().encode(),
            key=command.lane.encode(),
        )
    finally:
        await producer.stop()
    return signed
