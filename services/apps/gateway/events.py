"""``GET /v1/generations/{id}/events``: the job's life as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from services.apps.gateway.deps import (
    Config,
    Jobs,
    Reader,
    Signer,
    present,
    visible_job,
)
from services.apps.job_events import job_events
from services.apps.problems import problems

__all__ = ["router"]

router = APIRouter(prefix="/v1/generations", tags=["generations"])


@router.get(
    "/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        **problems(401, 403, 404),
    },
    response_class=StreamingResponse,
)
async def generation_events(
    job_id: str,
    request: Request,
    caller: Reader,
    jobs: Jobs,
    signer: Signer,
    settings: Config,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> StreamingResponse:
    """The job's status changes, milestones and step progress as Server-Sent Events,
    until it ends; resumable with Last-Event-ID."""
    visible_job(jobs, job_id, caller)
    try:
        resume = int(last_event_id or 0)
    except ValueError:
        resume = 0
    stream = job_events(
        lambda: jobs.job(job_id),
        lambda job: present(job, caller, jobs, signer, settings.public_base_url),
        last_event_id=resume,
        disconnected=request.is_disconnected,
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
