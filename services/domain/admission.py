"""Admission: per-tenant quotas (token buckets) at the gateway.

Written here rather than taken from a library: the gateway must answer at once with a
Retry-After, and the rate-limit libraries on PyPI either wait for capacity (aiolimiter) or
count fixed windows (limits), neither of which gives a token bucket's burst plus refill.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas.spec import GenerationSpec
from services.config.routes import LaneSpec
from services.config.settings import Quota

__all__ = ["Quota", "TokenBuckets", "defer_reason"]


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One bucket per tenant; tenants without a quota of their own share ``default``'s
    rate each (None: unlimited).

    ``share()`` is this replica's part of each quota: 1/N with N gateway replicas alive, so
    the fleet admits a tenant's quota, not N times it, when the load balancer spreads
    requests evenly."""

    def __init__(
        self,
        quotas: dict[str, Quota],
        default: Quota | None,
        clock: Callable[[], float] = time.monotonic,
        share: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.quotas = quotas
        self.default = default
        self.clock = clock
        self.share = share
        self.buckets: dict[str, _Bucket] = {}

    def take(self, tenant: str) -> float | None:
        """None when admitted (a token is spent); else seconds until one is available."""
        quota = self.quotas.get(tenant, self.default)
        if quota is None:
            return None
        share = self.share()
        rate, burst = quota.rate_per_s * share, max(1.0, quota.burst * share)
        now = self.clock()
        bucket = self.buckets.setdefault(tenant, _Bucket(burst, now))
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / rate

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))


def defer_reason(lane_name: str, lane: LaneSpec, spec: GenerationSpec, lag: int) -> str | None:
    """Why this job waits, or None when it may go to its lane now."""
    policy = lane.admission
    if policy is None or spec.priority not in policy.defer_priorities or lag <= policy.defer_lag:
        return None
    return f"lane {lane_name} is busy: {lag} jobs waiting (threshold {policy.defer_lag})"
