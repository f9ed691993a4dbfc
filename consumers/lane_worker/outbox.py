"""Where a GPU process's workers hand their outputs: the process's one idempotent
producer (its ``Member``), set when the process runs."""

from __future__ import annotations

import asyncio
from typing import Any

from consumers.machinery.loop import Output
from consumers.machinery.runtime import Member

__all__ = ["Outbox"]


class Outbox:
    def __init__(self) -> None:
        self.member: Member | None = None

    def _member(self) -> Member:
        if self.member is None:
            raise RuntimeError("the worker's process is not running (no producer yet)")
        return self.member

    async def send(self, outputs: list[Output]) -> None:
        """Publish and wait for the broker's acks."""
        await self._member().publish(outputs)

    async def enqueue(self, outputs: list[Output]) -> list[asyncio.Future[Any]]:
        """Hand outputs to the producer; the returned futures resolve on the broker's ack."""
        return await self._member().enqueue(outputs)
