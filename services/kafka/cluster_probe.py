"""What a component sees of the Kafka cluster, as metrics for the alerts: whether any broker
answers, and how many partitions of the topic it writes are below min.insync.replicas (an
acks=all write to one of them is refused until the replicas catch up)."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from prometheus_client import CollectorRegistry, Gauge

from producers.kafka import make_admin
from services.config.settings import Settings

__all__ = ["ClusterProbe"]

log = structlog.get_logger("lanes.kafka")


class ClusterProbe:
    def __init__(
        self, settings: Settings, topic: str, registry: CollectorRegistry, every_s: float = 10.0
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.every_s = every_s
        self.reachable = Gauge(
            "lanes_kafka_reachable",
            "1 while a broker of the bootstrap list answers this process's metadata requests",
            registry=registry,
        )
        self.under_min_isr = Gauge(
            "lanes_kafka_under_min_isr_partitions",
            "Partitions of the topic this process writes with fewer in-sync replicas than "
            "min.insync.replicas (acks=all writes to them fail)",
            ["topic"],
            registry=registry,
        )

    async def check(self) -> None:
        admin = make_admin(self.settings, request_timeout_ms=int(self.every_s * 1000))
        try:
            await asyncio.wait_for(admin.start(), self.every_s)
            (described,) = await asyncio.wait_for(admin.describe_topics([self.topic]), self.every_s)
            need = self.settings.cluster.min_insync_replicas
            under = sum(1 for p in described.get("partitions") or [] if len(p["isr"]) < need)
            self.reachable.set(1)
            self.under_min_isr.labels(self.topic).set(under)
        except Exception as exc:  # unreachable, timed out, refused: the cluster is not there
            self.reachable.set(0)
            log.warning("kafka_probe_failed", error=str(exc) or type(exc).__name__)
        finally:  # bounded: a close stuck on a dead connection must not hold the probe
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), self.every_s)

    async def run(self) -> None:
        """Probe every ``every_s`` until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self.every_s)
