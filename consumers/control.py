"""Control plane [group lanes-control]: signed ops commands -> each lane's desired state.

Reads ``lanes.ops``; refuses unsigned, forged, stale, replayed or invalid commands with a
logged reason (and an ``OpsResult`` on ``lanes.ops.results``); applies the rest and
publishes the lane's new desired state, revision + 1, to the compacted ``lanes.control``.
State is rebuilt from ``lanes.control`` on every assignment, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import structlog

from consumers.loop import MessageContext, Output
from consumers.restoring import RestoringListener
from consumers.runtime import run_consumer
from producers.ops import ForgedCommand, SignedCommand, verify_command
from schemas.control import LaneDesired, OpsResult
from schemas.topics import Topics
from services.compacted_view import CompactedView
from services.control_state import Rejected, apply_command, initial_state
from services.routes import Routes, load_routes
from services.settings import Settings

__all__ = ["run", "ControlPlane"]

log = structlog.get_logger("lanes.control")


class ControlPlane(RestoringListener):
    def __init__(self, settings: Settings, routes: Routes) -> None:
        super().__init__()
        self.routes = routes
        self.topics = Topics(settings.topic_prefix)
        self.key = settings.ops_key.get_secret_value()
        self.view: CompactedView[LaneDesired] = CompactedView(
            settings, self.topics.control, LaneDesired.model_validate_json)

    async def restore(self, partitions: list[int]) -> None:
        await self.view.load()
        log.info("control_state_restored", lanes={k: v.revision for k, v in self.view.items.items()})

    def state(self, lane: str) -> LaneDesired:
        return self.view.items.get(lane) or initial_state(self.routes, lane)

    async def handle(self, signed: object, ctx: MessageContext) -> Sequence[Output]:
        assert isinstance(signed, SignedCommand)
        await self.restored()
        try:
            cmd = verify_command(signed, self.key)
        except (ForgedCommand, ValueError) as exc:
            return self._reject(signed.id, "?", "?", f"not authentic: {exc}")
        if cmd.lane not in self.routes.lanes:
            return self._reject(cmd.command_id, cmd.lane, cmd.action, f"unknown lane {cmd.lane!r}")
        try:
            new = apply_command(self.state(cmd.lane), cmd, self.routes)
        except Rejected as exc:
            return self._reject(cmd.command_id, cmd.lane, cmd.action, str(exc))
        self.view.items[cmd.lane] = new
        log.info("ops_applied", command_id=cmd.command_id, lane=cmd.lane, action=cmd.action,
                 issuer=cmd.issuer, revision=new.revision, stable=new.stable.version,
                 canary=new.canary.target.version if new.canary else None)
        result = OpsResult(command_id=cmd.command_id, lane=cmd.lane, action=cmd.action,
                           outcome="applied", revision=new.revision)
        return [Output(self.topics.control, cmd.lane, new.model_dump_json().encode()),
                Output(self.topics.ops_results, cmd.command_id, result.model_dump_json().encode())]

    def _reject(self, command_id: str, lane: str, action: str, reason: str) -> list[Output]:
        log.warning("ops_rejected", command_id=command_id, lane=lane, action=action, reason=reason)
        result = OpsResult(command_id=command_id, lane=lane, action=action, outcome="rejected",
                           reason=reason)
        return [Output(self.topics.ops_results, command_id, result.model_dump_json().encode())]


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    plane = ControlPlane(settings, load_routes(settings.routes_file))
    await run_consumer(
        settings, name="control", topics=[plane.topics.ops],
        parse=SignedCommand.model_validate_json, handler=plane.handle, stop=stop, listener=plane,
    )
