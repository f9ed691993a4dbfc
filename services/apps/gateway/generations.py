"""``/v1/generations``: submit, list, get, cancel. The job's tenant is the key's tenant."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response

from schemas.records import JobState, JobStatus
from schemas.spec import GenerationSpec
from services.apps.gateway.deps import (
    Config,
    JobPublisher,
    JobReader,
    Jobs,
    Publisher,
    Reader,
    Signer,
    Writer,
    present,
    visible_job,
)
from services.apps.problems import problems
from services.auth.api_keys import Identity
from services.auth.url_signing import UrlSigner
from services.domain.job_index import BadCursor, JobFilter

__all__ = ["router", "spec_for", "accepted_body", "cancel_job"]

log = structlog.get_logger("lanes.gateway")
router = APIRouter(prefix="/v1/generations", tags=["generations"])


def spec_for(spec: GenerationSpec, caller: Identity) -> GenerationSpec:
    """The request as the caller's tenant: a body naming another tenant is refused (an
    admin key may act for any tenant), and so is one naming an edit's stored image."""
    if spec.edit is not None:  # an artifact URI from a client could name anyone's image
        raise HTTPException(
            422, "edit is set by POST /v1/images/edits, which stores the uploaded image"
        )
    if spec.tenant is None or spec.tenant == caller.tenant:
        return spec.model_copy(update={"tenant": caller.tenant})
    if caller.admin:
        return spec
    raise HTTPException(403, f"this API key acts for tenant {caller.tenant!r}, not {spec.tenant!r}")


def accepted_body(base_url: str, job_id: str, signer: UrlSigner) -> dict[str, Any]:
    job = f"{base_url}/v1/generations/{job_id}"
    links = {"self": job, "image": f"{job}/image", "cancel": f"{job}/cancel"}
    return {"job_id": job_id, "status": "queued", "links": signer.sign_public(links)}


async def cancel_job(
    jobs: JobReader, publisher: JobPublisher, job_id: str, caller: Identity
) -> JobState | None:
    """Publish a cancel for a job the caller may see and that has not ended: the job as it
    was (None: accepted, not folded yet). 404 / 409 otherwise."""
    job = visible_job(jobs, job_id, caller)
    if job is not None and job.terminal:
        raise HTTPException(409, f"generation {job_id!r} already ended: {job.status}")
    await publisher.cancel(job_id)
    log.info("generation_cancel_requested", job_id=job_id, key_id=caller.key_id)
    return job


@router.post("", status_code=202, responses=problems(401, 403, 422, 429, 503))
async def create_generation(
    spec: GenerationSpec,
    response: Response,
    caller: Writer,
    publisher: Publisher,
    signer: Signer,
    settings: Config,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    job_id, replayed = await publisher.accept(spec_for(spec, caller), idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted_body(settings.public_base_url, job_id, signer)


@router.get("", responses=problems(401, 403, 422))
async def list_generations(
    request: Request,
    caller: Reader,
    jobs: Jobs,
    signer: Signer,
    settings: Config,
    status: JobStatus | None = None,
    lane: Annotated[str | None, Query(max_length=100)] = None,
    intent: Literal["preview", "draft", "final"] | None = None,
    tenant: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """Jobs newest first, filtered; ``next_cursor`` fetches the page after this one. A
    tenant's key lists its own tenant's jobs (an admin key, any tenant's)."""
    if not caller.admin:
        if tenant is not None and tenant != caller.tenant:
            raise HTTPException(403, f"this API key lists tenant {caller.tenant!r} only")
        tenant = caller.tenant
    flt = JobFilter(status=status, lane=lane, intent=intent, tenant=tenant)
    try:
        found, next_cursor = jobs.page(flt, limit, cursor)
    except BadCursor as exc:
        raise HTTPException(422, str(exc)) from exc
    links: dict[str, str] = {}
    if next_cursor is not None:
        query = request.url.include_query_params(cursor=next_cursor).query
        links["next"] = f"{settings.public_base_url}/v1/generations?{query}"
    return {
        "items": [present(j, caller, jobs, signer, settings.public_base_url) for j in found],
        "next_cursor": next_cursor,
        "links": links,
    }


@router.get("/{job_id}", responses=problems(401, 403, 404))
async def get_generation(
    job_id: str, caller: Reader, jobs: Jobs, signer: Signer, settings: Config
) -> dict[str, Any]:
    job = visible_job(jobs, job_id, caller)
    if job is None:
        return {"job_id": job_id, "status": "queued"}
    return present(job, caller, jobs, signer, settings.public_base_url)


@router.post("/{job_id}/cancel", status_code=202, responses=problems(401, 403, 404, 409, 503))
async def cancel_generation(
    job_id: str,
    caller: Writer,
    jobs: Jobs,
    publisher: Publisher,
    settings: Config,
) -> dict[str, Any]:
    """Cancel: a queued or deferred job at once, a rendering one at its next step. The
    job stays readable (status ``canceled``) until retention deletes it."""
    job = await cancel_job(jobs, publisher, job_id, caller)
    running = job is not None and job.status == "running"
    return {
        "job_id": job_id,
        "status": "canceling" if running else "canceled",
        "links": {"self": f"{settings.public_base_url}/v1/generations/{job_id}"},
    }
