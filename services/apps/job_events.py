"""A job's life as Server-Sent Events (``GET /v1/generations/{id}/events``).

Events, in order:
- ``status``: the job (its public JSON) whenever its status, lane or queue position changes;
- ``milestone``: ``{"milestone", "at"}`` for each moment reached (draft_ready, upscaled,
  verified, succeeded...), in the order reached;
- ``progress``: ``{"stage", "attempt", "step", "steps", "preview"}`` as the worker reports
  denoising steps (a few a second; ``preview`` a low-resolution data: URI where the lane
  sends them);
- ``end``: the final job, once it is terminal; then the stream closes.

Ids rise within a stream and come from the data (the time of the state, milestone or
step), so any gateway replica gives the same ones. Reconnecting with ``Last-Event-ID``
(browsers do it on their own) skips the milestones and progress already seen; the current
status is sent again (a snapshot). The gateway reads its own job view (a keyed SQLite
read) every ``poll_s``: no broker round trip per client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from schemas.records import JobState

__all__ = ["job_events", "sse", "parse_sse", "SseEvent"]

KIND = {"status": 1, "milestone": 2, "progress": 3, "end": 4}
# Milestones reached in one fold share a timestamp: this order breaks the tie.
MILESTONE_ORDER = {
    m: i
    for i, m in enumerate(
        ["draft_ready", "upscaled", "verified", "succeeded", "failed", "canceled"]
    )
}


class SseEvent:
    __slots__ = ("event", "id", "data")

    def __init__(self, event: str, event_id: int | None, data: Any) -> None:
        self.event, self.id, self.data = event, event_id, data

    def __repr__(self) -> str:
        return f"SseEvent({self.event!r}, {self.id!r})"


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Events from a text/event-stream's lines (comments and retry hints skipped)."""
    event, event_id, data = "message", None, list[str]()
    for line in lines:
        if line == "":
            if data:
                yield SseEvent(event, event_id, json.loads("\n".join(data)))
            event, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "id":
                event_id = int(value)
            elif field == "data":
                data.append(value)


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in json.dumps(data, separators=(",", ":")).splitlines()]
    return "\n".join(lines) + "\n\n"


def _natural(at: datetime, kind: str, tie: int = 0) -> int:
    """Milliseconds, then the kind, then a tie-break: the same on every replica."""
    return int(at.timestamp() * 1000) * 100 + KIND[kind] * 10 + tie


async def job_events(
    job: Callable[[], JobState | None],
    public: Callable[[JobState], dict[str, Any]],
    *,
    last_event_id: int = 0,
    disconnected: Callable[[], Awaitable[bool]],
    poll_s: float = 0.25,
    keepalive_s: float = 15.0,
) -> AsyncIterator[str]:
    last = last_event_id
    sent_status: tuple[Any, ...] | None = None
    sent_progress: tuple[Any, ...] | None = None
    sent_milestones: set[str] = set()
    quiet_since = time.monotonic()
    yield "retry: 2000\n\n"  # reconnect after 2 s (EventSource resends Last-Event-ID)

    def next_id(natural: int) -> int:
        nonlocal last
        last = max(natural, last + 1)
        return last

    while True:
        state = job()
        out: list[str] = []
        if state is not None:
            body = public(state)
            key = (state.status, state.lane, body.get("queue_position"), state.attempt)
            if key != sent_status:
                sent_status = key
                out.append(sse("status", body, next_id(_natural(state.updated_at, "status"))))
            rank = MILESTONE_ORDER
            reached = sorted(state.milestones.items(), key=lambda kv: (kv[1], rank.get(kv[0], 9)))
            for name, at in reached:
                natural = _natural(at, "milestone", rank.get(name, 9))
                if name in sent_milestones or natural <= last_event_id:
                    continue
                sent_milestones.add(name)
                out.append(
                    sse("milestone", {"milestone": name, "at": at.isoformat()}, next_id(natural))
                )
            p = state.progress
            if p is not None and not state.terminal:
                pkey = (p.attempt, p.stage, p.step)
                natural = _natural(p.at, "progress")
                if pkey != sent_progress and natural > last_event_id:
                    sent_progress = pkey
                    out.append(sse("progress", p.model_dump(mode="json"), next_id(natural)))
            if state.terminal:
                end = state.finished_at or state.updated_at
                out.append(sse("end", body, next_id(_natural(end, "end"))))
        for chunk in out:
            yield chunk
        if out:
            quiet_since = time.monotonic()
        if state is not None and state.terminal:
            return
        if time.monotonic() - quiet_since > keepalive_s:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"  # proxies keep the connection; the client ignores it
        if await disconnected():
            return
        await asyncio.sleep(poll_s)
