"""The job records of ``lanes.jobs`` in an SQLite view: one job by id, a filtered page
newest first, a deferred job's place in the queue, and the finished jobs past retention.

Every query rides on an index, so its cost grows with the rows it returns (a page, the
jobs ahead in the queue), never with the jobs ever made.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas.records import TERMINAL, JobState
from services.config.settings import Settings
from services.kafka.sqlite_view import SqliteView

__all__ = ["JobIndex", "JobFilter", "BadCursor", "job_columns", "micros"]

COLUMNS = ("status", "lane", "intent", "tenant", "created", "deferred", "finished")
INDEXES = (
    ("created", "key"),
    ("status", "created", "key"),
    ("tenant", "created", "key"),
    ("lane", "created", "key"),
    ("intent", "created", "key"),
    ("status", "intent", "deferred", "key"),
    ("finished",),
)


class BadCursor(ValueError):
    """A list cursor this gateway did not make."""


def micros(value: str | datetime | None) -> int | None:
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return int(moment.timestamp() * 1_000_000)


def job_columns(value: bytes) -> Mapping[str, Any]:
    """The queried fields of a job record (plain JSON: cheaper than the full model)."""
    data = json.loads(value)
    spec = data.get("spec") or {}
    status = data.get("status", "queued")
    return {
        "status": status,
        "lane": data.get("lane"),
        "intent": spec.get("intent"),
        "tenant": spec.get("tenant"),
        "created": micros(data.get("created_at") or data.get("updated_at")),
        "deferred": micros(data.get("deferred_at")),
        "finished": micros(data.get("finished_at") or data.get("updated_at"))
        if status in TERMINAL
        else None,
    }


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    lane: str | None = None
    intent: str | None = None
    tenant: str | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        clauses, params = [], []
        for name in ("status", "lane", "intent", "tenant"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{name}=?")
                params.append(value)
        return clauses, params


def encode_cursor(created: int, key: str) -> str:
    raw = json.dumps([created, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor("cursor is not one this API returned") from exc
    if not isinstance(created, int) or not isinstance(key, str):
        raise BadCursor("cursor is not one this API returned")
    return created, key


class JobIndex:
    """``lanes.jobs`` as a queryable view in ``path`` (see ``SqliteView``)."""

    def __init__(self, settings: Settings, topic: str, path: Path) -> None:
        self.view = SqliteView(
            settings, topic, path, columns=COLUMNS, indexes=INDEXES, extract=job_columns
        )

    def get(self, job_id: str) -> JobState | None:
        value = self.view.get(job_id)
        return JobState.model_validate_json(value) if value is not None else None

    def put(self, job: JobState) -> None:
        self.view.put(job.job_id, job.model_dump_json().encode())

    def page(
        self, flt: JobFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[JobState], str | None]:
        """Up to ``limit`` jobs newest first, and the cursor of the next page (or None)."""
        clauses, params = flt.where()
        if cursor is not None:
            created, key = decode_cursor(cursor)
            clauses.append("(created < ? OR (created = ? AND key < ?))")
            params += [created, created, key]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.view.query(
            f"SELECT key, created, value FROM rows {where} ORDER BY created DESC, key DESC LIMIT ?",
            [*params, limit + 1],
        )
        jobs = [JobState.model_validate_json(value) for _, _, value in rows[:limit]]
        more = len(rows) > limit
        return jobs, encode_cursor(rows[limit - 1][1], rows[limit - 1][0]) if more else None

    def queue_position(self, job: JobState, tenant: str | None = None) -> int:
        """1 + the deferred jobs of the same intent parked before this one (an index range);
        with ``tenant``, only that tenant's are counted (a tenant sees only its own jobs)."""
        intent = job.spec.intent if job.spec else None
        deferred = micros(job.deferred_at) or 0
        own = " AND tenant IS ?" if tenant is not None else ""
        (ahead,) = self.view.query(
            "SELECT COUNT(*) FROM rows WHERE status='deferred' AND intent IS ? "
            f"AND (deferred < ? OR (deferred = ? AND key < ?)){own}",
            [intent, deferred, deferred, job.job_id, *([tenant] if tenant is not None else [])],
        )[0]
        return 1 + int(ahead)

    def finished_before(self, cutoff: datetime, limit: int = 500) -> list[JobState]:
        """Finished jobs whose end is older than ``cutoff`` (oldest first)."""
        rows = self.view.query(
            "SELECT value FROM rows WHERE finished < ? ORDER BY finished LIMIT ?",
            [micros(cutoff), limit],
        )
        return [JobState.model_validate_json(value) for (value,) in rows]

    def delete(self, job_id: str) -> None:
        self.view.delete(job_id)
