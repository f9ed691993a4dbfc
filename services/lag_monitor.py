"""Each lane's consumer-group lag, polled in the background (admission, autoscaling)."""

from __future__ import annotations

import asyncio

import structlog

from schemas.topics import Topics
from services.autoscale import consumer_lags
from services.settings import Settings

__all__ = ["LagMonitor"]

log = structlog.get_logger("lanes.lag")


class LagMonitor:
    def __init__(self, settings: Settings, lanes: list[str], every_s: float) -> None:
        topics = Topics(settings.topic_prefix)
        self.settings = settings
        self.every_s = every_s
        self.wanted = {lane: (settings.group(f"lanes-lane-{lane}"), topics.lane(lane))
                       for lane in lanes}
        self.lags: dict[str, int] = {}
        self.measured = asyncio.Event()

    def lag(self, lane: str) -> int:
        return self.lags.get(lane, 0)

    async def poll(self) -> dict[str, int]:
        self.lags = await consumer_lags(self.settings, self.wanted)
        self.measured.set()
        return self.lags

    async def run(self) -> None:
        if not self.wanted:
            self.measured.set()  # nothing to measure: every lag is 0
        while True:
            if self.wanted:
                try:
                    await self.poll()
                except Exception as exc:  # noqa: BLE001 - a signal, never a reason to stop
                    log.warning("lag_unavailable", error=str(exc)[:300])
            await asyncio.sleep(self.every_s)
