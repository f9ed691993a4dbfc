"""OpenAI-compatible images API: ``POST /v1/images/generations`` as the official SDKs send
it (``client.images.generate(...)``), so a client switches to Lanes by its base URL.

Each image is an ordinary Lanes job (routing, caps, cascade, verification, webhooks, quotas,
cancel, its trace and metrics); ``n`` images are ``n`` jobs submitted together, which the
lane batches. The call waits for them, up to ``gateway.openai_wait_s``. A client that
disconnects, or a call that times out, cancels nothing: the jobs finish and stay readable at
``/v1/generations/{id}`` (a timeout's answer names them, with ``x-should-retry: false`` so
the SDK does not submit them again).

Errors on these routes use OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``), which the SDKs parse into ``openai.BadRequestError`` and the like; Lanes' own
routes keep RFC 9457 problems. Not built yet: ``stream`` (refused with the reason) and
``/v1/images/edits``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import structlog
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from schemas.records import JobState
from schemas.spec import GenerationSpec
from services.apps.gateway.deps import (
    Config,
    JobReader,
    Jobs,
    Publisher,
    Signer,
    Store,
    Writer,
)
from services.config.routes import Routes
from services.storage.artifacts import ArtifactError, ArtifactUnavailable

__all__ = ["router", "ImageGenerateRequest", "OpenAIError"]

log = structlog.get_logger("lanes.gateway")

INTENT_MODELS = {"lanes-preview": "preview", "lanes-draft": "draft", "lanes-final": "final"}
QUALITY_INTENT = {
    "low": "preview",
    "medium": "draft",
    "standard": "draft",
    "auto": "draft",
    "high": "final",
    "hd": "final",
}
INTENT_QUALITY = {"preview": "low", "draft": "medium", "final": "high"}
MEDIA = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class OpenAIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.headers = kind, headers or {}

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


class OpenAIErrorRoute(APIRoute):
    """This router's errors in OpenAI's shape: bad bodies (400, ``param`` naming the field),
    and the gateway's own refusals (401, 403, 429, 503) with their status and headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return exc.response()
            except RequestValidationError as exc:
                return _invalid(exc.errors()).response()
            except HTTPException as exc:
                kind = _KINDS.get(exc.status_code, "invalid_request_error")
                if exc.status_code == 429:
                    kind = "rate_limit_error"
                elif exc.status_code >= 500:
                    kind = "server_error"
                return OpenAIError(
                    exc.status_code, str(exc.detail), kind=kind, headers=dict(exc.headers or {})
                ).response()

        return handle


def _invalid(errors: Any) -> OpenAIError:
    first = list(errors)[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None
    message = first.get("msg", "invalid request")
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return OpenAIError(400, f"{param}: {message}" if param else message, param=param, code=code)


class ImageGenerateRequest(BaseModel):
    """What ``client.images.generate`` sends; the SDK's ``extra_body`` carries Lanes' own
    fields (``seed``, ``negative_prompt``, ``text``, ``priority``, ``webhook_url``)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=2000)
    model: str | None = Field(None, max_length=200)
    n: StrictInt | None = Field(1, ge=1, le=10)
    size: str | None = Field(None, max_length=20)
    quality: Literal["low", "medium", "high", "auto", "standard", "hd"] | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: StrictInt | None = Field(None, ge=0, le=100)
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = Field(None, max_length=200)
    stream: bool | None = None
    partial_images: StrictInt | None = Field(None, ge=0, le=3)
    # Lanes' own (extra_body)
    seed: StrictInt | None = Field(None, ge=0, le=2**32 - 11)
    negative_prompt: str | None = Field(None, max_length=1000)
    text: str | None = Field(None, max_length=200)
    priority: Literal["low", "normal", "high"] | None = None
    webhook_url: str | None = Field(None, max_length=2000)


def intent_for(req: ImageGenerateRequest, routes: Routes) -> str:
    """``model`` names an intent (``lanes-draft``...) or a configured model (the first
    intent whose lane runs it); with neither, ``quality`` picks the intent."""
    if req.model is None:
        return QUALITY_INTENT[req.quality or "auto"]
    if req.model in INTENT_MODELS:
        return INTENT_MODELS[req.model]
    for intent in ("draft", "final", "preview"):
        lane = routes.intents.get(intent)
        if lane is not None and routes.lanes[lane].model == req.model:
            return intent
    known = sorted({*INTENT_MODELS, *(routes.lanes[n].model for n in routes.intents.values())})
    raise OpenAIError(
        404,
        f"the model {req.model!r} does not exist here; use one of {', '.join(known)}",
        param="model",
        code="model_not_found",
    )


def size_of(req: ImageGenerateRequest) -> tuple[int, int] | None:
    """``WxH`` (multiples of 8, 64–2048), or None for the lane's own (``auto`` / absent)."""
    if req.size in (None, "auto"):
        return None
    try:
        width, height = (int(v) for v in req.size.lower().split("x"))
    except ValueError:
        raise OpenAIError(
            400,
            f"size {req.size!r} is not WIDTHxHEIGHT or auto",
            param="size",
            code="invalid_value",
        ) from None
    for v in (width, height):
        if not 64 <= v <= 2048 or v % 8:
            raise OpenAIError(
                400,
                f"size {req.size!r}: each side must be a multiple of 8 from 64 to 2048",
                param="size",
                code="invalid_value",
            )
    return width, height


def check_output(req: ImageGenerateRequest) -> tuple[str, str]:
    """(response_format, output_format), refusing what these lanes cannot give."""
    fmt = req.output_format or "png"
    response_format = req.response_format or "b64_json"
    if req.background == "transparent":
        raise OpenAIError(
            400,
            "transparent backgrounds are not supported: the lanes render opaque images",
            param="background",
            code="invalid_value",
        )
    if req.output_compression is not None and fmt == "png":
        raise OpenAIError(
            400,
            "output_compression applies to jpeg and webp, not png",
            param="output_compression",
            code="invalid_value",
        )
    if response_format == "url" and fmt != "png":
        raise OpenAIError(
            400,
            "image URLs serve PNG; ask for b64_json to get jpeg or webp",
            param="output_format",
            code="invalid_value",
        )
    if req.stream:
        raise OpenAIError(
            400,
            "streaming is not supported yet: call without stream, or follow "
            "/v1/generations/{id}/events",
            param="stream",
            code="invalid_value",
        )
    return response_format, fmt


def specs_for(req: ImageGenerateRequest, intent: str, tenant: str) -> list[GenerationSpec]:
    size = size_of(req)
    fields: dict[str, Any] = {
        "prompt": req.prompt,
        "intent": intent,
        "tenant": tenant,
        "metadata": {"api": "openai-images", **({"user": req.user} if req.user else {})},
    }
    for name in ("negative_prompt", "text", "priority", "webhook_url"):
        if getattr(req, name) is not None:
            fields[name] = getattr(req, name)
    if size is not None:
        fields["width"], fields["height"] = size
    out = []
    for i in range(req.n or 1):
        seed = None if req.seed is None else req.seed + i  # n different images, reproducibly
        try:
            out.append(GenerationSpec(**fields, seed=seed))
        except ValidationError as exc:
            raise _invalid(exc.errors()) from None
    return out


async def wait_for(jobs: JobReader, ids: list[str], timeout_s: float) -> dict[str, JobState]:
    """The jobs once every one has ended, or OpenAIError 504 naming those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {i: j for i in ids if (j := jobs.job(i)) is not None and j.terminal}
        if len(found) == len(ids):
            return found
        if time.monotonic() >= deadline:
            pending = [i for i in ids if i not in found]
            raise OpenAIError(
                504,
                f"the images were not ready within {timeout_s:g} s; the jobs go on and stay "
                f"readable at /v1/generations/{{id}}: {', '.join(pending)}",
                kind="timeout",
                code="timeout",
                headers={"x-should-retry": "false"},
            )
        await asyncio.sleep(0.05)


def _encode(data: bytes, fmt: str, compression: int | None) -> bytes:
    if fmt == "png":
        return data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.save(out, MEDIA[fmt], quality=85 if compression is None else compression)
    return out.getvalue()


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape (what the SDKs parse), on these routes only."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in {
        400: "A field the lanes cannot serve (``param`` names it)",
        401: "No valid API key",
        403: "The key lacks generations:write",
        404: "An unknown model (``model_not_found``)",
        429: "Over the tenant's quota, or too many failed keys",
        500: "A job did not succeed (named, with its reason)",
        503: "The broker or the image store did not answer; retry",
        504: "Not ready within gateway.openai_wait_s; the jobs go on (named)",
    }.items()
}

router = APIRouter(prefix="/v1/images", tags=["openai-compatible"], route_class=OpenAIErrorRoute)


@router.post("/generations", responses=ERRORS)
async def create_images(
    req: ImageGenerateRequest,
    caller: Writer,
    request: Request,
    publisher: Publisher,
    jobs: Jobs,
    signer: Signer,
    store: Store,
    settings: Config,
) -> dict[str, Any]:
    """Images for a prompt, as OpenAI's images API answers: ``data[]`` with ``b64_json`` or
    a signed ``url``, once every image's job has ended."""
    created = int(time.time())
    routes: Routes = request.app.state.views.routes
    intent = intent_for(req, routes)
    response_format, fmt = check_output(req)
    specs = specs_for(req, intent, caller.tenant)
    accepted = await asyncio.gather(*(publisher.accept(s, None) for s in specs))
    ids = [job_id for job_id, _ in accepted]
    log.info("openai_images_accepted", job_ids=ids, intent=intent, key_id=caller.key_id)
    done = await wait_for(jobs, ids, settings.gateway.openai_wait_s)
    failed = [j for j in done.values() if j.status != "succeeded"]
    if failed:
        reasons = "; ".join(
            f"{j.job_id}: {j.status} ({j.error or j.failure_reason})" for j in failed
        )
        raise OpenAIError(
            500,
            f"image generation did not succeed: {reasons}",
            kind="server_error",
            code="generation_failed",
            headers={"x-should-retry": "false"},
        )
    data = []
    sizes = set()
    for job_id in ids:
        job = done[job_id]
        artifact = job.delivered or job.artifacts[-1]
        sizes.add(f"{artifact.width}x{artifact.height}")
        if response_format == "url":
            public = signer.sign_public(job.public(settings.public_base_url))
            data.append({"url": public["delivered"]["uri"]})
            continue
        try:
            raw = await asyncio.to_thread(store.get, artifact.uri)
        except (ArtifactError, ArtifactUnavailable) as exc:
            log.warning("openai_image_unreadable", job_id=job_id, error=str(exc)[:300])
            raise OpenAIError(
                503,
                f"the image store did not answer; the images are at /v1/generations/{job_id}",
                kind="server_error",
                headers={"x-should-retry": "false"},
            ) from exc
        encoded = await asyncio.to_thread(_encode, raw, fmt, req.output_compression)
        data.append({"b64_json": base64.b64encode(encoded).decode()})
    body: dict[str, Any] = {
        "created": created,
        "data": data,
        "background": "opaque",
        "output_format": fmt,
        "quality": INTENT_QUALITY[intent],
    }
    if len(sizes) == 1:
        body["size"] = sizes.pop()
    return body
