"""Control-plane rules without a broker: canary judgement, automatic rollback, canary
buckets, the autoscaling signal, and the Kubernetes manifests."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from consumers.lane_worker.models import canary_bucket
from schemas.control import Canary, LaneDesired, ModelRef, WorkerStatus
from services.domain.autoscale import LaneSample, ThroughputMeter, desired_replicas
from services.domain.canary import CanaryJudge
from services.domain.control_state import auto_rollback

V1 = ModelRef(model="sd", version="v1")
V2 = ModelRef(model="sd", version="v2")
V0 = ModelRef(model="sd", version="v0")


def canary_state() -> LaneDesired:
    return LaneDesired(
        lane="draft", revision=3, stable=V1, previous=V0, canary=Canary(target=V2, percent=20)
    )


def test_canary_is_judged_only_after_min_jobs_and_beyond_the_margin() -> None:
    judge = CanaryJudge(min_jobs=5, margin=0.2)
    state = canary_state()
    for _ in range(10):
        judge.render("draft", "sd", "v1", ok=True)
    for _ in range(4):
        judge.render("draft", "sd", "v2", ok=False)
    assert judge.verdict(state) is None  # 4 < min_jobs
    judge.render("draft", "sd", "v2", ok=False)
    reason = judge.verdict(state)
    assert reason is not None and "sd v2 failed 5/5 renders (100%)" in reason


def test_verification_failures_within_the_margin_keep_the_canary() -> None:
    judge = CanaryJudge(min_jobs=4, margin=0.25)
    state = canary_state()
    for passed in (True, True, False, True):  # stable: 25% fail
        judge.verification("draft", "sd", "v1", passed)
    for passed in (True, False, False, True):  # canary: 50% fail, +25 points: not beyond
        judge.verification("draft", "sd", "v2", passed)
    assert judge.verdict(state) is None
    judge.verification("draft", "sd", "v2", False)  # 60%: +35 points
    assert "failed verification 3/5" in (judge.verdict(state) or "")
    judge.reset("draft", V2)  # a new canary of the same version starts clean
    assert judge.verdict(state) is None


def test_auto_rollback_drops_a_canary_or_returns_a_fresh_deploy_to_previous() -> None:
    dropped = auto_rollback(canary_state(), V2, "bad")
    assert dropped is not None and dropped.canary is None and dropped.stable == V1
    assert (dropped.revision, dropped.actor, dropped.reason) == (
        4,
        "control-plane",
        "automatic rollback: bad",
    )
    deployed = LaneDesired(lane="draft", revision=5, stable=V2, previous=V1)
    back = auto_rollback(deployed, V2, "failed to load")
    assert back is not None and back.stable == V1 and back.previous is None
    assert auto_rollback(back, V1, "again") is None  # nothing left to return to


def test_canary_buckets_are_stable_per_job_and_spread_evenly() -> None:
    ids = [f"job_{i:05d}" for i in range(5000)]
    assert [canary_bucket(j) for j in ids[:50]] == [canary_bucket(j) for j in ids[:50]]
    share = sum(canary_bucket(j) < 30 for j in ids) / len(ids)
    assert 0.27 < share < 0.33
    assert len(Counter(canary_bucket(j) for j in ids)) == 100


def test_desired_replicas_follow_lag_and_throughput() -> None:
    steady = LaneSample(lag=0, lag_growth_per_s=0, replicas=2, jobs_per_s=4.0)
    assert desired_replicas(steady, drain_s=60, max_replicas=10) == 2
    # 120 jobs behind and growing by 2/s: (4 + 2 + 120/60) / 2 per replica = 4 replicas.
    burst = LaneSample(lag=120, lag_growth_per_s=2.0, replicas=2, jobs_per_s=4.0)
    assert desired_replicas(burst, drain_s=60, max_replicas=10) == 4
    assert desired_replicas(burst, drain_s=1, max_replicas=10) == 10  # capped
    idle = LaneSample(lag=0, lag_growth_per_s=0, replicas=0, jobs_per_s=0)
    assert desired_replicas(idle, drain_s=60, max_replicas=10) == 0
    waiting = LaneSample(lag=5, lag_growth_per_s=1, replicas=0, jobs_per_s=0)
    assert desired_replicas(waiting, drain_s=60, max_replicas=10) == 1


def test_throughput_meter_rates_from_heartbeats() -> None:
    meter = ThroughputMeter()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i, done in enumerate((0, 10, 20)):  # 10 jobs every 5 s
        meter.observe(
            WorkerStatus(
                instance="a",
                lane="draft",
                health="ready",
                jobs_done=done,
                at=t0 + timedelta(seconds=5 * i),
            )
        )
    assert meter.rate(["a"]) == 2.0 and meter.rate(["b"]) == 0.0
