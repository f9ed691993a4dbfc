"""What a lane worker needs of ``lanes.jobs``: for jobs changed recently, whether each has
ended, is being canceled, and which (attempt, stage) images it has. Read from
``LANES_WORKER_RECENT_JOBS_S`` ago (``RecentView``), never the whole history.

Redelivered work is older than that only when a lane's backlog is; then the render is
repeated, and the job's fold still takes one terminal result (the webhook is sent once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from schemas.records import TERMINAL
from schemas.topics import Topics
from services.config.settings import Settings
from services.kafka.recent_view import RecentView

__all__ = ["JobDigest", "job_digest", "recent_jobs"]


@dataclass(frozen=True)
class JobDigest:
    terminal: bool
    canceling: bool
    attempt: int
    rendered: frozenset[tuple[int, str]]  # (attempt, stage) of each image it has


def job_digest(value: bytes) -> JobDigest | None:
    """The digest of a job record, or None when nothing in it can skip or stop a render."""
    data = json.loads(value)
    status = data.get("status")
    digest = JobDigest(
        terminal=status in TERMINAL,
        canceling=bool(data.get("cancel_requested")) or status == "canceled",
        attempt=int(data.get("attempt", 1)),
        rendered=frozenset(
            (int(a.get("attempt", 1)), str(a.get("stage"))) for a in data.get("artifacts", [])
        ),
    )
    keep = digest.terminal or digest.canceling or digest.rendered or digest.attempt > 1
    return digest if keep else None


def recent_jobs(settings: Settings) -> RecentView[JobDigest]:
    return RecentView(
        settings, Topics(settings.topic_prefix).jobs, job_digest, settings.worker.recent_jobs_s
    )
