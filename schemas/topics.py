"""Topic names, consumer-group ids and the topics' declarations, in one place.

``lanes.requests``, ``lanes.ops`` and ``lanes.dlq`` are contracts with systems outside this
repo: rename them only with a migration note.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["TopicSpec", "Topics", "Groups", "Partitions", "KEYED_TOPICS"]

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 3
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    extra: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if not self.compacted:
            cfg["retention.ms"] = str(self.retention_ms)
        cfg.update(self.extra)
        return cfg


@dataclass(frozen=True)
class Partitions:
    """How many partitions the fleet-sized topics get (a consumer group uses at most one
    member per partition): the CPU groups' shared topics, and each lane's (by lane, else
    ``lanes``). The other topics are single-writer or followed whole and keep fixed counts."""

    topics: int = 6
    lanes: int = 6
    by_lane: tuple[tuple[str, int], ...] = ()

    def lane(self, lane: str) -> int:
        return dict(self.by_lane).get(lane, self.lanes)


# Topics whose records are keyed by job (or delivery) and compacted: a key's partition is
# hash(key) mod the count, so adding partitions would move keys and split their history.
KEYED_TOPICS = ("jobs", "webhook_deliveries", "keys", "control", "workers", "gateways")


@dataclass(frozen=True)
class Topics:
    """Topic names under an optional prefix (tests give each test its own prefix)."""

    prefix: str = ""

    def _n(self, name: str) -> str:
        return f"{self.prefix}lanes.{name}"

    @property
    def requests(self) -> str:
        return self._n("requests")

    @property
    def deferred(self) -> str:
        return self._n("deferred")

    def lane(self, lane: str) -> str:
        return self._n(f"lane.{lane}")

    def spill(self, lane: str) -> str:
        """A lane's burst overflow, served by the workers of the lanes that assist it."""
        return self._n(f"lane.{lane}.spill")

    @property
    def renders(self) -> str:
        return self._n("renders")

    @property
    def verifications(self) -> str:
        return self._n("verifications")

    @property
    def jobs(self) -> str:
        return self._n("jobs")

    @property
    def webhook_deliveries(self) -> str:
        return self._n("webhooks.deliveries")

    @property
    def webhooks_retry(self) -> str:
        return self._n("webhooks.retry")

    @property
    def webhooks_dlq(self) -> str:
        return self._n("webhooks.dlq")

    @property
    def dlq(self) -> str:
        return self._n("dlq")

    @property
    def ops(self) -> str:
        return self._n("ops")

    @property
    def ops_results(self) -> str:
        return self._n("ops.results")

    @property
    def control(self) -> str:
        return self._n("control")

    @property
    def workers(self) -> str:
        return self._n("workers")

    @property
    def keys(self) -> str:
        """API keys (key = key id): hash, tenant, scopes, expiry, revoked; compacted."""
        return self._n("keys")

    @property
    def gateways(self) -> str:
        """Gateway replicas' heartbeats (key = instance): how a tenant's quota is shared."""
        return self._n("gateways")

    def specs(
        self,
        lanes: Iterable[str],
        spill: Iterable[str] = (),
        partitions: Partitions = Partitions(),  # noqa: B008 (frozen)
    ) -> list[TopicSpec]:
        """Every topic the stack needs, given the lanes named in the routes file (and those
        of them with a spill queue)."""
        n = partitions.topics
        heartbeats = {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(DAY_MS),
            "segment.ms": str(3600 * 1000),
        }
        specs = [
            TopicSpec(self.requests, partitions=n),
            TopicSpec(self.renders, partitions=n),
            TopicSpec(self.deferred, partitions=n),
            TopicSpec(self.verifications, partitions=n),
            TopicSpec(self.jobs, partitions=n, compacted=True),
            TopicSpec(self.webhook_deliveries, partitions=n, compacted=True),
            TopicSpec(self.webhooks_retry, partitions=3, retention_ms=7 * DAY_MS),
            TopicSpec(self.webhooks_dlq, partitions=1, retention_ms=30 * DAY_MS),
            TopicSpec(self.dlq, partitions=1, retention_ms=30 * DAY_MS),
            TopicSpec(self.ops, partitions=1),
            TopicSpec(self.ops_results, partitions=1, retention_ms=DAY_MS),
            TopicSpec(self.control, partitions=1, compacted=True),
            TopicSpec(self.keys, partitions=1, compacted=True),
            # Heartbeats, key = instance: compacted to each instance's latest, then deleted
            # a day after an instance goes quiet.
            TopicSpec(self.workers, partitions=1, compacted=True, extra=heartbeats),
            TopicSpec(self.gateways, partitions=1, compacted=True, extra=heartbeats),
        ]
        specs += [
            TopicSpec(self.lane(lane), partitions=partitions.lane(lane))
            for lane in sorted(set(lanes))
        ]
        specs += [
            TopicSpec(self.spill(lane), partitions=partitions.lane(lane))
            for lane in sorted(set(spill))
        ]
        return specs


@dataclass(frozen=True)
class Groups:
    """Consumer-group ids under an optional prefix (tests give each test its own).

    The ids are as deployed: a group's committed offsets live under its id, so renaming one
    would make it read its topics again from the start. ``verify`` and ``webhooks-retry``
    therefore keep their names although their components are ``verifier`` and
    ``webhook-retries``.
    """

    prefix: str = ""

    def _g(self, name: str) -> str:
        return f"{self.prefix}lanes-{name}"

    @property
    def router(self) -> str:
        return self._g("router")

    @property
    def deferred(self) -> str:
        return self._g("deferred")

    @property
    def jobs(self) -> str:
        return self._g("jobs")

    @property
    def verifier(self) -> str:
        return self._g("verify")

    @property
    def webhooks(self) -> str:
        return self._g("webhooks")

    @property
    def webhook_retries(self) -> str:
        return self._g("webhooks-retry")

    @property
    def control(self) -> str:
        return self._g("control")

    def lane(self, lane: str) -> str:
        """The workers of a lane."""
        return self._g(f"lane-{lane}")

    def spill(self, lane: str) -> str:
        """The guests serving a lane's spill queue (in the workers that assist or backfill it)."""
        return self._g(f"lane-{lane}-spill")
