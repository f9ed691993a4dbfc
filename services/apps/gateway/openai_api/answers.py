"""The answers: ``data[]`` once every job has ended, or a stream of Server-Sent Events (the
job's partial images, then the image) as the SDK's ``stream=True`` reads them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from PIL import Image

from schemas.records import Artifact, JobState
from services.apps.gateway.deps import JobReader
from services.apps.gateway.openai_api.errors import OpenAIError
from services.apps.gateway.openai_api.params import Output
from services.auth.url_signing import UrlSigner
from services.storage.artifacts import ArtifactError, ArtifactStore, ArtifactUnavailable

__all__ = ["wait_for", "images_body", "stream_events", "failure"]

log = structlog.get_logger("lanes.gateway")
MEDIA = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
POLL_S = 0.05


def _timeout(timeout_s: float, pending: list[str]) -> OpenAIError:
    return OpenAIError(
        504,
        f"the images were not ready within {timeout_s:g} s; the jobs go on and stay "
        f"readable at /v1/generations/{{id}}: {', '.join(pending)}",
        kind="timeout",
        code="timeout",
        headers={"x-should-retry": "false"},
    )


def failure(failed: list[JobState]) -> OpenAIError:
    """A 500 naming each job that did not succeed, and why."""
    reasons = "; ".join(f"{j.job_id}: {j.status} ({j.error or j.failure_reason})" for j in failed)
    return OpenAIError(
        500,
        f"image generation did not succeed: {reasons}",
        kind="server_error",
        code="generation_failed",
        headers={"x-should-retry": "false"},
    )


async def wait_for(jobs: JobReader, ids: list[str], timeout_s: float) -> dict[str, JobState]:
    """The jobs once every one has ended, or OpenAIError 504 naming those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {i: j for i in ids if (j := jobs.job(i)) is not None and j.terminal}
        if len(found) == len(ids):
            return found
        if time.monotonic() >= deadline:
            raise _timeout(timeout_s, [i for i in ids if i not in found])
        await asyncio.sleep(POLL_S)


def _encode(data: bytes, out: Output) -> bytes:
    if out.format == "png":
        return data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, MEDIA[out.format], quality=85 if out.compression is None else out.compression)
    return buf.getvalue()


async def _b64(store: ArtifactStore, job_id: str, uri: str, out: Output) -> str:
    """The stored image, in the asked format, base64."""
    try:
        raw = await asyncio.to_thread(store.get, uri)
    except (ArtifactError, ArtifactUnavailable) as exc:
        log.warning("openai_image_unreadable", job_id=job_id, error=str(exc)[:300])
        raise OpenAIError(
            503,
            f"the image store did not answer; the images are at /v1/generations/{job_id}",
            kind="server_error",
            headers={"x-should-retry": "false"},
        ) from exc
    return base64.b64encode(await asyncio.to_thread(_encode, raw, out)).decode()


def _image(job: JobState) -> Artifact:
    return job.delivered or job.artifacts[-1]


async def images_body(
    done: dict[str, JobState],
    ids: list[str],
    out: Output,
    *,
    store: ArtifactStore,
    signer: UrlSigner,
    base_url: str,
) -> dict[str, Any]:
    """``data[]`` in job order (b64_json, or a signed URL under the gateway), and ``size``
    when every image has the same."""
    failed = [done[i] for i in ids if done[i].status != "succeeded"]
    if failed:
        raise failure(failed)
    data = []
    for job_id in ids:
        job = done[job_id]
        if out.response_format == "url":
            public = signer.sign_public(job.public(base_url))
            data.append({"url": public["delivered"]["uri"]})
        else:
            data.append({"b64_json": await _b64(store, job_id, _image(job).uri, out)})
    sizes = {f"{_image(done[i]).width}x{_image(done[i]).height}" for i in ids}
    body: dict[str, Any] = {"data": data, "background": "opaque", "output_format": out.format}
    if len(sizes) == 1:
        body["size"] = sizes.pop()
    return body


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream_events(
    job_id: str,
    find: Callable[[str], JobState | None],
    out: Output,
    *,
    prefix: str,  # "image_generation" or "image_edit"
    quality: str,
    store: ArtifactStore,
    timeout_s: float,
) -> AsyncIterator[str]:
    """``<prefix>.partial_image`` for each partial image the render stored (and a cascade's
    draft, while fewer than asked were sent), then ``<prefix>.completed`` with the image; a
    job that fails, or a wait past ``timeout_s``, ends the stream with an ``error`` event
    (the SDK raises it as ``openai.APIError``). The job is not canceled if the client goes."""
    deadline = time.monotonic() + timeout_s
    sent: set[tuple[str, int]] = set()  # ("partial", index) or ("draft", attempt)
    common = {"background": "opaque", "output_format": out.format, "quality": quality}
    try:
        while True:
            job = find(job_id)
            if job is not None:
                for key, artifact in _partials(job):
                    if key in sent or len(sent) >= out.partial_images:
                        continue
                    sent.add(key)
                    yield _sse(
                        f"{prefix}.partial_image",
                        {
                            "type": f"{prefix}.partial_image",
                            "b64_json": await _b64(store, job_id, artifact[0], out),
                            "partial_image_index": len(sent) - 1,
                            "size": f"{artifact[1]}x{artifact[2]}",
                            "created_at": int(time.time()),
                            **common,
                        },
                    )
                if job.terminal:
                    if job.status != "succeeded":
                        raise failure([job])
                    image = _image(job)
                    yield _sse(
                        f"{prefix}.completed",
                        {
                            "type": f"{prefix}.completed",
                            "b64_json": await _b64(store, job_id, image.uri, out),
                            "size": f"{image.width}x{image.height}",
                            "created_at": int(time.time()),
                            **common,
                        },
                    )
                    return
            if time.monotonic() >= deadline:
                raise _timeout(timeout_s, [job_id])
            await asyncio.sleep(POLL_S)
    except OpenAIError as exc:
        yield _sse("error", {"type": "error", "error": exc.body})


def _partials(job: JobState) -> list[tuple[tuple[str, int], tuple[str, int, int]]]:
    """The job's partial images in order, then its cascade draft (an intermediate image)."""
    found = [(("partial", p.index), (p.uri, p.width, p.height)) for p in job.partials]
    for a in job.artifacts:
        if not a.deliverable and a.attempt == job.attempt:
            found.append((("draft", a.attempt), (a.uri, a.width, a.height)))
    return found
