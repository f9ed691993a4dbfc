"""Control-plane records: ops commands (``lanes.ops``, contract), each lane's desired
state (``lanes.control``, compacted, key = lane) and command outcomes."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import utcnow

__all__ = [
    "OpsAction",
    "OpsCommand",
    "ModelRef",
    "Canary",
    "LaneDesired",
    "OpsResult",
    "WorkerStatus",
    "WorkerHealth",
    "live_workers",
]

OpsAction = Literal["deploy", "canary", "promote", "rollback", "set", "pause", "resume", "restart"]


class OpsCommand(BaseModel):
    """What an operator asks for. Sent signed (Standard Webhooks scheme, ops key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str = Field(default_factory=lambda: f"cmd_{uuid.uuid4().hex}")
    action: OpsAction
    lane: str = Field(min_length=1, max_length=64)
    issuer: str = Field("ops", max_length=64)
    issued_at: datetime = Field(default_factory=utcnow)
    model: str | None = None  # deploy / canary: a model name (from the routes file, or new)
    # A version the routes file does not name: its checkpoint directory or a tiny build seed.
    version: str | None = Field(None, min_length=1, max_length=64)
    path: str | None = Field(None, max_length=1000)
    tiny_seed: int | None = None
    percent: int | None = Field(None, ge=1, le=99)  # canary
    max_concurrency: int | None = Field(None, ge=1, le=64)  # set
    sample_steps: int | None = Field(None, ge=1, le=200)  # set
    reason: str | None = Field(None, max_length=500)


class ModelRef(BaseModel):
    """A model version; ``path`` or ``tiny_seed`` when it is not the routes file's entry."""

    model_config = ConfigDict(frozen=True)

    model: str
    version: str
    path: str | None = None
    tiny_seed: int | None = None

    @property
    def label(self) -> str:
        return f"{self.model} {self.version}"


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
    # Who made this revision: "ops:<issuer>" or "control-plane" (automatic rollback).
    actor: str = "ops"
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


WorkerHealth = Literal["starting", "ready", "restarting", "draining", "stopped"]


class WorkerStatus(BaseModel):
    """A lane worker's heartbeat on ``lanes.workers`` (compacted, key = instance)."""

    instance: str
    lane: str
    health: WorkerHealth
    # "spill": it serves the lane's burst overflow, as a guest in a worker of another lane.
    serves: Literal["lane", "spill"] = "lane"
    stable: ModelRef | None = None  # what it serves now
    canary: ModelRef | None = None
    canary_percent: int = 0
    applied_revision: int = 0  # the lanes.control revision whose models it serves
    restart_generation: int = 0
    # Versions this worker could not load (label -> error); it keeps serving what it has.
    load_errors: dict[str, str] = Field(default_factory=dict)
    # Hosted engines not calling now (label -> "throttled: ..." or "paused: <reason>").
    engine_states: dict[str, str] = Field(default_factory=dict)
    # Warnings about what it serves (a retired model name served by its successor).
    notices: list[str] = Field(default_factory=list)
    in_flight: int = 0
    jobs_done: int = 0
    device: str = "cpu"
    at: datetime = Field(default_factory=utcnow)


def live_workers(
    statuses: Iterable[WorkerStatus], lane: str, stale_s: float, serves: str | None = None
) -> list[str]:
    """Instances of ``lane`` that are not stopped and reported within ``stale_s`` (only
    those that serve ``serves``, "lane" or "spill", when given)."""
    now = utcnow()
    return [
        s.instance
        for s in statuses
        if s.lane == lane
        and s.health != "stopped"
        and (serves is None or s.serves == serves)
        and (now - s.at).total_seconds() < stale_s
    ]
