"""A rebalance listener that reloads state before the group's handler may use it.

aiokafka sets the new assignment (and may fetch) before the listener's
``on_partitions_assigned`` finishes, so the handler awaits ``restored()`` as a gate: closed
at construction and on revocation, opened once the state for the assignment is loaded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRebalanceListener

__all__ = ["RestoringListener"]


class RestoringListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self._restored = asyncio.Event()

    async def restore(self, partitions: list[int]) -> None:
        raise NotImplementedError

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._restored.clear()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._restored.clear()
        await self.restore(sorted({tp.partition for tp in assigned}))
        self._restored.set()

    async def restored(self) -> None:
        await self._restored.wait()
