"""A job's images: ``/v1/generations/{id}/image`` and ``/artifacts/{name}``.

Either the URL is signed (``expires`` and ``sig``, as every URL a response or webhook hands
out is: fetchable by a browser, curl or a webhook receiver with no header), or the request
carries a key with ``generations:read`` for the job's tenant. Unsigned, tampered or
wrong-path: 403; expired: 410; each says which.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from schemas.records import JobState, artifact_name
from services.apps.gateway.auth import Authenticator
from services.apps.gateway.deps import (
    Jobs,
    Store,
    client_address,
    get_auth,
    need,
    visible_job,
)
from services.apps.problems import problems
from services.auth.url_signing import BadSignature, Expired
from services.storage.artifacts import ArtifactError, ArtifactStore, ArtifactUnavailable

__all__ = ["router"]

log = structlog.get_logger("lanes.gateway")

router = APIRouter(prefix="/v1/generations", tags=["images"])
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The PNG image"}
}
# A bearer key, or none at all (a signed URL: ``expires`` and ``sig``).
KEY_OR_SIGNED: dict[str, Any] = {"security": [{"HTTPBearer": []}, {}]}
Expires = Annotated[str | None, Query(max_length=20, description="signed URLs: expiry (unix s)")]
Sig = Annotated[str | None, Query(max_length=128, description="signed URLs: the signature")]


class Access:
    """Dependency: the job behind an image URL, if the request may fetch it."""

    def __init__(self, resource: str) -> None:
        self.resource = resource  # "image" or "artifacts/{name}"

    async def __call__(
        self,
        request: Request,
        job_id: str,
        auth: Annotated[Authenticator, Depends(get_auth)],
        jobs: Jobs,
        expires: Expires = None,
        sig: Sig = None,
    ) -> JobState | None:
        client = client_address(request)
        header = request.headers.get("authorization")
        if header is not None:
            caller = need(await auth.identify(client, header), "generations:read")
            return visible_job(jobs, job_id, caller)
        auth.check_throttle(client)
        resource = f"{job_id}/{self.resource.format(**request.path_params)}"
        try:
            auth.signer.verify(resource, expires, sig)
        except BadSignature as exc:
            auth.throttle.failed(client)
            raise HTTPException(403, str(exc)) from exc
        except Expired as exc:
            raise HTTPException(410, str(exc)) from exc
        job = jobs.job(job_id)
        if job is None and jobs.accepted.get(job_id) is None:
            raise HTTPException(404, f"no generation {job_id!r}")
        return job


async def _file(store: ArtifactStore, uri: str) -> Response:
    # The store's own words name its paths and buckets: logged, not shown to the client.
    try:
        data = await asyncio.to_thread(store.get, uri)
    except ArtifactError as exc:
        log.warning("artifact_gone", error=str(exc))
        raise HTTPException(410, "the image is gone (retention deleted it)") from exc
    except ArtifactUnavailable as exc:
        log.warning("artifact_store_unavailable", error=str(exc))
        raise HTTPException(
            503, "the image store did not answer; retry", headers={"Retry-After": "5"}
        ) from exc
    return Response(data, media_type="image/png", headers={"Cache-Control": "private"})


@router.get(
    "/{job_id}/image",
    response_model=None,
    response_class=Response,
    responses={**PNG, **problems(401, 403, 404, 409, 410, 503)},
    openapi_extra=KEY_OR_SIGNED,
)
async def get_image(
    job_id: str,
    job: Annotated[JobState | None, Depends(Access("image"))],
    store: Store,
) -> Response:
    """The job's delivered image (or its latest, before one is chosen)."""
    if job is None:
        raise HTTPException(409, f"generation {job_id!r} has no image yet (queued)")
    if not job.artifacts:
        raise HTTPException(409, f"generation {job_id!r} has no image yet ({job.status})")
    return await _file(store, (job.delivered or job.artifacts[-1]).uri)


@router.get(
    "/{job_id}/artifacts/{name}",
    response_model=None,
    response_class=Response,
    responses={**PNG, **problems(401, 403, 404, 410, 503)},
    openapi_extra=KEY_OR_SIGNED,
)
async def get_artifact(
    job_id: str,
    name: str,
    job: Annotated[JobState | None, Depends(Access("artifacts/{name}"))],
    store: Store,
) -> Response:
    """One of the job's images by the name its URL carries (drafts, repaired...)."""
    if job is not None:
        for uri in job.artifact_uris():
            if artifact_name(uri) == name:
                return await _file(store, uri)
    raise HTTPException(404, f"generation {job_id!r} has no artifact {name!r}")
