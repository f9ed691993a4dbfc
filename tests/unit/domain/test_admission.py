from __future__ import annotations

from services.config.settings import Quota
from services.domain.admission import TokenBuckets


def test_token_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(
        {"acme": Quota(rate_per_s=2, burst=3)}, default=None, clock=lambda: now[0]
    )
    assert [buckets.take("acme") for _ in range(3)] == [None, None, None]
    wait = buckets.take("acme")
    assert wait is not None and abs(wait - 0.5) < 1e-9  # one token every 0.5 s
    now[0] += 0.5
    assert buckets.take("acme") is None and buckets.take("acme") is not None
    now[0] += 100  # refills only up to the burst
    assert [buckets.take("acme") for _ in range(4)].count(None) == 3
    assert all(buckets.take("other") is None for _ in range(50))  # no default: unlimited
    assert TokenBuckets.retry_after_header(0.2) == "1"


def test_default_quota_applies_to_each_unnamed_tenant_separately() -> None:
    buckets = TokenBuckets({}, default=Quota(rate_per_s=1, burst=1), clock=lambda: 0.0)
    assert buckets.take("a") is None and buckets.take("b") is None
    assert buckets.take("a") is not None


def test_each_gateway_replica_takes_its_share_of_a_quota() -> None:
    now = [0.0]
    replicas = [3]
    buckets = TokenBuckets(
        {"acme": Quota(rate_per_s=6, burst=9)},
        None,
        clock=lambda: now[0],
        share=lambda: 1 / replicas[0],
    )
    admitted = sum(buckets.take("acme") is None for _ in range(10))
    assert admitted == 3  # a third of the burst
    now[0] += 1.0  # a third of the rate: 2 tokens a second
    assert sum(buckets.take("acme") is None for _ in range(10)) == 2
    replicas[0] = 1  # the others stopped: this replica takes the whole quota again
    now[0] += 10.0
    assert sum(buckets.take("acme") is None for _ in range(20)) == 9
