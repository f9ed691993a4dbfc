"""Control-plane records: ops commands (``lanes.ops``, contract), each lane's desired
state (``lanes.control``, compacted, key = lane) and command outcomes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import utcnow

__all__ = ["OpsAction", "OpsCommand", "ModelRef", "Canary", "LaneDesired", "OpsResult"]

OpsAction = Literal["deploy", "canary", "promote", "rollback", "set", "pause", "resume", "restart"]


class OpsCommand(BaseModel):
    """What an operator asks for. Sent signed (Standard Webhooks scheme, ops key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str = Field(default_factory=lambda: f"cmd_{uuid.uuid4().hex}")
    action: OpsAction
    lane: str = Field(min_length=1, max_length=64)
    issuer: str = Field("ops", max_length=64)
    issued_at: datetime = Field(default_factory=utcnow)
    model: str | None = None  # deploy / canary: a model name from the routes file
    percent: int | None = Field(None, ge=1, le=99)  # canary
    max_concurrency: int | None = Field(None, ge=1, le=64)  # set
    sample_steps: int | None = Field(None, ge=1, le=200)  # set
    reason: str | None = Field(None, max_length=500)


class ModelRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: str


class Canary(BaseModel):
    model_config = ConfigDict(frozen=True)

    target: ModelRef
    percent: int


class LaneDesired(BaseModel):
    """A lane's desired state; every change bumps ``revision``."""

    lane: str
    revision: int = 0
    stable: ModelRef
    previous: ModelRef | None = None  # what a rollback returns to
    canary: Canary | None = None
    max_concurrency: int | None = None
    sample_steps: int | None = None
    paused: bool = False
    restart_generation: int = 0
    reason: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    # Ids of the last commands applied (replays are refused after a restart too).
    recent_commands: list[str] = Field(default_factory=list)


class OpsResult(BaseModel):
    command_id: str
    lane: str
    action: str
    outcome: Literal["applied", "rejected"]
    reason: str | None = None
    revision: int | None = None
    at: datetime = Field(default_factory=utcnow)
