"""How many gateway replicas are alive, so that each takes its share of a tenant's quota.

Each replica publishes a heartbeat (key = its instance id) on ``lanes.gateways`` every
``LANES_HEARTBEAT_S`` and follows the topic; replicas heard from within
``LANES_WORKER_STALE_S`` count. A replica that stops deletes its heartbeat, so the others
take its share at once; one that dies is dropped when it goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time

import structlog
from aiokafka import AIOKafkaProducer

from schemas.topics import Topics
from services.config.settings import Settings
from services.kafka.compacted_view import CompactedView

__all__ = ["GatewayFleet"]

log = structlog.get_logger("lanes.gateway")


def _beat(value: bytes) -> float:
    return float(json.loads(value)["at"])


class GatewayFleet:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.topic = Topics(settings.topic_prefix).gateways
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{settings.gateway.port}"
        self.view: CompactedView[float] = CompactedView(settings, self.topic, _beat)

    def live(self) -> int:
        """Replicas heard from recently, this one included."""
        horizon = time.time() - self.settings.control.worker_stale_s
        others = sum(1 for k, at in self.view.items.items() if k != self.instance and at >= horizon)
        return 1 + others

    def share(self) -> float:
        return 1.0 / self.live()

    async def run(self) -> None:
        """Heartbeat and follow until cancelled; then delete this replica's heartbeat."""
        follower = asyncio.create_task(self.view.follow(), name="gateway-fleet")
        try:
            while True:
                with contextlib.suppress(Exception):  # the broker is away: beat again later
                    body = json.dumps({"instance": self.instance, "at": time.time()})
                    await asyncio.wait_for(
                        self.producer.send_and_wait(
                            self.topic, key=self.instance.encode(), value=body.encode()
                        ),
                        self.settings.control.heartbeat_s * 2,
                    )
                await asyncio.sleep(self.settings.control.heartbeat_s)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.producer.send_and_wait(self.topic, key=self.instance.encode(), value=None),
                    2,
                )
