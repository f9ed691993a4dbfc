"""Autoscaling signal: how many replicas each lane needs, from its consumer lag and the
throughput its replicas have shown (heartbeats' ``jobs_done``).

needed = (arrival rate + lag / drain_s) / per-replica throughput, where the arrival rate is
what the lane finished plus how fast its lag grew. Exported by the control plane as
``lanes_autoscale_desired_replicas{lane}``; KEDA can scale on it or on the lag directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from schemas.control import WorkerStatus

__all__ = ["LaneSample", "desired_replicas", "ThroughputMeter"]


@dataclass(frozen=True)
class LaneSample:
    lag: int  # records waiting in the lane's topic for its group
    lag_growth_per_s: float  # d(lag)/dt since the last sample
    replicas: int  # live instances
    jobs_per_s: float  # what all of them finished per second


def desired_replicas(s: LaneSample, *, drain_s: float, max_replicas: int) -> int:
    if s.replicas == 0 or s.jobs_per_s <= 0:
        # No measured throughput: keep what runs, and at least one when work waits.
        return min(max_replicas, max(s.replicas, 1 if s.lag > 0 else 0))
    per_replica = s.jobs_per_s / s.replicas
    arrival = max(0.0, s.jobs_per_s + s.lag_growth_per_s)
    needed = (arrival + s.lag / drain_s) / per_replica
    return max(1, min(max_replicas, math.ceil(needed - 1e-9)))


@dataclass
class ThroughputMeter:
    """Jobs per second per lane from successive heartbeats of its instances."""

    window_s: float = 30.0
    seen: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def observe(self, status: WorkerStatus) -> None:
        points = self.seen.setdefault(status.instance, [])
        points.append((status.at.timestamp(), status.jobs_done))
        cutoff = points[-1][0] - self.window_s
        while len(points) > 2 and points[0][0] < cutoff:
            points.pop(0)

    def rate(self, instances: list[str]) -> float:
        total = 0.0
        for inst in instances:
            points = self.seen.get(inst, [])
            if len(points) >= 2 and points[-1][0] > points[0][0]:
                done = points[-1][1] - points[0][1]
                total += max(0, done) / (points[-1][0] - points[0][0])
        return total
