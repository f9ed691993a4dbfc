"""``POST /v1/images/generations`` and ``POST /v1/images/edits`` as the official SDKs send
them (``client.images.generate(...)``, ``client.images.edit(...)``), so a client switches to
Lanes by its base URL.

Each image is an ordinary Lanes job (routing, caps, cascade, verification, webhooks, quotas,
cancel, its trace and metrics); ``n`` images are ``n`` jobs submitted together, which the
lane batches. The call waits for them, up to ``gateway.openai_wait_s``; with ``stream`` it
answers Server-Sent Events (the render's partial images, then the image). A client that
disconnects, or a call that times out, cancels nothing: the jobs finish and stay readable at
``/v1/generations/{id}`` (a timeout's answer names them, with ``x-should-retry: false`` so
the SDK does not submit them again).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from producers.client import job_id_for
from schemas.spec import GenerationSpec
from services.apps.gateway.deps import (
    Config,
    JobPublisher,
    JobReader,
    Jobs,
    Publisher,
    Signer,
    Store,
    Writer,
)
from services.apps.gateway.openai_api.answers import images_body, stream_events, wait_for
from services.apps.gateway.openai_api.errors import ERRORS, OpenAIErrorRoute, bad_param
from services.apps.gateway.openai_api.params import (
    INTENT_QUALITY,
    ImageEditRequest,
    ImageGenerateRequest,
    Output,
    intent_for,
    output_of,
    parse_form,
    specs_for,
)
from services.apps.gateway.openai_api.uploads import Upload, mask_of, read_upload, store_edit
from services.auth.api_keys import Identity
from services.auth.url_signing import UrlSigner
from services.config.routes import Routes
from services.config.settings import Settings
from services.storage.artifacts import ArtifactStore

__all__ = ["router"]

log = structlog.get_logger("lanes.gateway")
router = APIRouter(prefix="/v1/images", tags=["openai-compatible"], route_class=OpenAIErrorRoute)
STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "With stream: SSE"}
}


@dataclass(frozen=True)
class Call:
    """One call's caller and the gateway parts both routes use."""

    caller: Identity
    publisher: JobPublisher
    jobs: JobReader
    signer: UrlSigner
    store: ArtifactStore
    settings: Settings
    routes: Routes

    async def accept(self, specs: list[GenerationSpec], keys: list[str | None]) -> list[str]:
        """The jobs, published together; their ids in order."""
        sends = (self.publisher.accept(s, k) for s, k in zip(specs, keys, strict=True))
        return [job_id for job_id, _ in await asyncio.gather(*sends)]

    async def answer(self, ids: list[str], intent: str, out: Output, prefix: str) -> Any:
        """``data[]`` once every job has ended, or (``stream``) the events of the one job."""
        quality = INTENT_QUALITY[intent]
        wait_s = self.settings.gateway.openai_wait_s
        if out.stream:
            events = stream_events(
                ids[0], self.jobs.job, out, prefix=prefix, quality=quality, store=self.store,
                timeout_s=wait_s,
            )  # fmt: skip
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        created = int(time.time())
        done = await wait_for(self.jobs, ids, wait_s)
        body = await images_body(
            done, ids, out, store=self.store, signer=self.signer,
            base_url=self.settings.public_base_url,
        )  # fmt: skip
        return {"created": created, **body, "quality": quality}


def call_of(
    caller: Writer,
    request: Request,
    publisher: Publisher,
    jobs: Jobs,
    signer: Signer,
    store: Store,
    settings: Config,
) -> Call:
    routes: Routes = request.app.state.views.routes
    return Call(caller, publisher, jobs, signer, store, settings, routes)


ThisCall = Annotated[Call, Depends(call_of)]


@router.post("/generations", responses={**ERRORS, **STREAM})
async def create_images(req: ImageGenerateRequest, call: ThisCall) -> Any:
    """Images for a prompt, as OpenAI's images API answers: ``data[]`` with ``b64_json`` or
    a signed ``url`` once every image's job has ended, or (``stream``) its partial images
    and the image as Server-Sent Events."""
    intent = intent_for(req, call.routes)
    out = output_of(req)
    specs = specs_for(req, intent, call.caller.tenant, out.partial_images)
    ids = await call.accept(specs, [None] * len(specs))
    log.info("openai_images_accepted", job_ids=ids, intent=intent, key_id=call.caller.key_id)
    return await call.answer(ids, intent, out, "image_generation")


EDIT_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        **ImageEditRequest.model_json_schema()["properties"],
                        "image": {"type": "string", "format": "binary"},
                        "mask": {"type": "string", "format": "binary"},
                        "markup": {
                            "type": "string",
                            "format": "binary",
                            "description": "not supported: refused with a 400",
                        },
                    },
                }
            }
        },
    }
}


@router.post("/edits", responses={**ERRORS, **STREAM}, openapi_extra=EDIT_FORM)
async def create_edits(request: Request, call: ThisCall) -> Any:
    """An uploaded image changed by a prompt (img2img on the deployment's edit lane), with a
    ``mask`` (transparent where it changes) inpainted where the lane's engine can."""
    form = await request.form(max_files=4, max_fields=40)
    req = parse_form({k: v for k, v in form.multi_items() if isinstance(v, str)})
    files = [f for k in ("image", "image[]") for f in form.getlist(k) if isinstance(f, UploadFile)]
    if not files:
        raise bad_param("image", "image is required (a PNG, JPEG or WebP file)")
    if form.get("markup") is not None:
        raise bad_param("markup", "markup images are not supported; send a mask")
    if len(files) > 1:
        raise bad_param("image", "one image per edit here (reference images are not supported)")
    intent = intent_for(req, call.routes)
    out = output_of(req)
    lane = call.routes.edit_lane
    if lane is None:
        raise bad_param("image", "no lane here renders from an image (none has refine_strength)")
    limit = call.settings.gateway.openai_image_max_bytes
    image = await read_upload(files[0], "image", limit)
    mask_file = form.get("mask")
    mask = None
    if isinstance(mask_file, UploadFile):
        if not call.routes.inpaints(lane):
            raise bad_param(
                "mask", f"the edit lane {lane!r} runs a hosted model that takes no mask"
            )
        mask = mask_of(await read_upload(mask_file, "mask", limit), image)
    return await _edit(req, intent, out, image, mask, call)


async def _edit(
    req: ImageEditRequest, intent: str, out: Output, image: Upload, mask: Upload | None, call: Call
) -> Any:
    tenant = call.caller.tenant
    # The job ids come first (an idempotency key each): the uploads are stored under them.
    keys: list[str | None] = [uuid.uuid4().hex for _ in range(req.n or 1)]
    ids = [job_id_for(k, tenant) for k in keys]
    specs = specs_for(req, intent, tenant, out.partial_images)  # checked before any upload
    image_png = await asyncio.to_thread(image.png)
    mask_png = None if mask is None else await asyncio.to_thread(mask.png)
    edits = [await store_edit(call.store, job_id, image_png, mask_png) for job_id in ids]
    specs = [s.model_copy(update={"edit": e}) for s, e in zip(specs, edits, strict=True)]
    try:
        ids = await call.accept(specs, keys)
    except Exception:
        for job_id in ids:  # nothing was accepted for them: no orphaned uploads
            if call.jobs.accepted.get(job_id) is None:
                await asyncio.to_thread(call.store.delete_job, job_id)
        raise
    log.info("openai_edits_accepted", job_ids=ids, intent=intent, key_id=call.caller.key_id)
    return await call.answer(ids, intent, out, "image_edit")
