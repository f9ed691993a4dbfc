"""The routers' dependencies: who the caller is, what they may do, and the objects the
routes work with. Each is a ``Depends`` target, so a test swaps it through
``app.dependency_overrides`` (a test identity, an in-memory job view, a recording publisher).
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from schemas.keys import Scope
from schemas.records import JobState
from schemas.spec import GenerationSpec
from services.apps.gateway.auth import Authenticator
from services.auth.api_keys import Identity
from services.auth.url_signing import UrlSigner
from services.config.settings import Settings
from services.domain.job_index import JobFilter
from services.storage.artifacts import ArtifactStore

__all__ = [
    "JobReader",
    "JobPublisher",
    "get_settings",
    "get_jobs",
    "get_publisher",
    "get_signer",
    "get_store",
    "get_auth",
    "get_caller",
    "require",
    "need",
    "Reader",
    "Writer",
    "Admin",
    "client_address",
    "visible_job",
    "present",
]


class JobReader(Protocol):
    def job(self, job_id: str) -> JobState | None: ...

    def page(
        self, flt: JobFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[JobState], str | None]: ...

    def queue_position(self, job: JobState, tenant: str | None = None) -> int: ...

    def serving(self, lane: str) -> bool: ...  # a worker of the lane reports ready

    @property
    def accepted(self) -> Any: ...  # .get(job_id) -> (fingerprint, tenant) | None


class JobPublisher(Protocol):
    async def accept(
        self, spec: GenerationSpec, idempotency_key: str | None
    ) -> tuple[str, bool]: ...

    async def cancel(self, job_id: str) -> None: ...


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_jobs(request: Request) -> JobReader:
    return request.app.state.views  # type: ignore[no-any-return]


def get_publisher(request: Request) -> JobPublisher:
    return request.app.state.publisher  # type: ignore[no-any-return]


def get_signer(request: Request) -> UrlSigner:
    return request.app.state.auth.signer  # type: ignore[no-any-return]


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_auth(request: Request) -> Authenticator:
    return request.app.state.auth  # type: ignore[no-any-return]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# Declares the bearer scheme in the OpenAPI document; the header itself is parsed by the
# key ring (a wrong scheme and a wrong key get the same 401).
bearer = HTTPBearer(auto_error=False, description="An API key: lanes_<key id>_<secret>")


async def get_caller(
    request: Request,
    auth: Annotated[Authenticator, Depends(get_auth)],
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Identity:
    """The key's identity: 401 (with ``WWW-Authenticate: Bearer``) without a valid one."""
    return await auth.identify(client_address(request), request.headers.get("authorization"))


def need(caller: Identity, scope: Scope) -> Identity:
    """The caller, if its key holds ``scope``; a 403 otherwise."""
    if not caller.can(scope):
        raise HTTPException(403, f"this API key lacks the {scope!r} scope")
    return caller


def require(scope: Scope) -> Any:
    def check(caller: Annotated[Identity, Depends(get_caller)]) -> Identity:
        return need(caller, scope)

    return check


Reader = Annotated[Identity, Depends(require("generations:read"))]
Writer = Annotated[Identity, Depends(require("generations:write"))]
Admin = Annotated[Identity, Depends(require("admin"))]
# The app's parts as route parameters.
Jobs = Annotated[JobReader, Depends(get_jobs)]
Publisher = Annotated[JobPublisher, Depends(get_publisher)]
Signer = Annotated[UrlSigner, Depends(get_signer)]
Store = Annotated[ArtifactStore, Depends(get_store)]
Config = Annotated[Settings, Depends(get_settings)]


def visible_job(jobs: JobReader, job_id: str, caller: Identity) -> JobState | None:
    """The job if the caller may see it; None if accepted but not folded yet; 404 when it
    is unknown or another tenant's (never 403: ids do not leak)."""
    job = jobs.job(job_id)
    if job is not None:
        if caller.sees(job.spec.tenant if job.spec else None):
            return job
    else:
        accepted = jobs.accepted.get(job_id)
        if accepted is not None and caller.sees(accepted[1]):
            return None
    raise HTTPException(404, f"no generation {job_id!r}")


def present(
    job: JobState, caller: Identity, jobs: JobReader, signer: UrlSigner, base_url: str
) -> dict[str, Any]:
    """The job's public JSON for this caller: image URLs freshly signed, a deferred job's
    queue position among what the caller may see, and why a routed job is not rendering
    yet when no worker of its lane is ready (``waiting``)."""
    body = job.public(base_url)
    if job.status == "deferred":
        body["queue_position"] = jobs.queue_position(job, None if caller.admin else caller.tenant)
    if job.status == "routed" and job.lane is not None and not jobs.serving(job.lane):
        body["waiting"] = (
            f"no worker of lane {job.lane!r} is ready yet; the job renders when one is "
            "(a starting worker loads its models first)"
        )
    return signer.sign_public(body)  # type: ignore[no-any-return]
