"""What the Lanes page shows, from what the gateway already has: the workers' heartbeats
(rollout view), the lanes' consumer-group lag, and the jobs that finished recently in its
own job view (latency per model and version, throughput, spill and deferral counts)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from schemas.events import utcnow
from services.apps.bench.stats import pct
from services.domain.job_index import JobIndex, micros
from services.domain.rollout import LaneRollout

__all__ = ["LaneRow", "lane_rows", "WINDOW_S"]

WINDOW_S = 900  # latency, spill and deferral over the last 15 minutes
RATE_S = 60  # jobs per second over the last minute
SCAN_LIMIT = 5000  # finished jobs read at most per refresh


@dataclass
class LaneRow:
    lane: str
    lag: int | None = None
    spill_lag: int | None = None
    jobs_per_s: float = 0.0
    latency: list[dict[str, Any]] = field(default_factory=list)  # per model and version
    spilled: int = 0
    deferred: int = 0
    failed: int = 0
    rollout: LaneRollout | None = None


def lane_rows(
    lanes: list[str],
    rollouts: list[LaneRollout],
    jobs: JobIndex,
    lags: dict[str, int] | None,
    spill_lags: dict[str, int] | None = None,
) -> list[LaneRow]:
    now = utcnow()
    since = micros(now - timedelta(seconds=WINDOW_S))
    recent = micros(now - timedelta(seconds=RATE_S))
    rows = {lane: LaneRow(lane) for lane in lanes}
    for r in rollouts:
        if r.lane in rows:
            rows[r.lane].rollout = r
    for lane, row in rows.items():
        row.lag = None if lags is None else lags.get(lane)
        row.spill_lag = None if spill_lags is None else spill_lags.get(lane)
    latencies: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    done_recently: dict[str, int] = defaultdict(int)
    for finished, value in jobs.view.query(
        "SELECT finished, value FROM rows WHERE finished >= ? ORDER BY finished DESC LIMIT ?",
        [since, SCAN_LIMIT],
    ):
        job = json.loads(value)
        lane = job.get("lane")
        if lane not in rows or job.get("status") not in ("succeeded", "failed", "canceled"):
            continue
        row = rows[lane]
        if finished >= recent:
            done_recently[lane] += 1
        if job.get("deferred_at"):
            row.deferred += 1
        if any("-spill" in (a.get("instance") or "") for a in job.get("artifacts") or []):
            row.spilled += 1
        if job["status"] == "failed":
            row.failed += 1
        timings = job.get("timings") or {}
        if job["status"] == "succeeded" and timings.get("total_ms") is not None:
            latencies[(lane, job.get("model") or "?", job.get("version") or "?")].append(
                timings["total_ms"] / 1000
            )
    for (lane, model, version), values in sorted(latencies.items()):
        rows[lane].latency.append(
            {
                "model": model,
                "version": version,
                "jobs": len(values),
                "p50": pct(values, 50),
                "p95": pct(values, 95),
            }
        )
    for lane, n in done_recently.items():
        rows[lane].jobs_per_s = n / RATE_S
    return list(rows.values())
