"""An edit's uploads: the image (PNG, JPEG or WebP) and its optional mask, checked and
stored under the job's prefix in the artifact store, where the lane worker reads them.

OpenAI's mask convention: a PNG with an alpha channel, the size of the image, fully
transparent where the image should change. It is stored as the pipelines take it: white
where the image may change, black where it stays."""

from __future__ import annotations

import asyncio
import io
import warnings

from PIL import Image
from starlette.datastructures import UploadFile

from schemas.spec import EditSource
from services.apps.gateway.openai_api.errors import OpenAIError, bad_param
from services.storage.artifacts import ArtifactError, ArtifactStore, ArtifactUnavailable

__all__ = ["Upload", "read_upload", "store_edit"]

FORMATS = {"PNG", "JPEG", "WEBP"}
MAX_SIDE = 4096


class Upload:
    """A checked image: its pixels, re-encoded as PNG (nothing of the upload's own bytes,
    metadata included, is stored)."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, "PNG")
        return buf.getvalue()


async def read_upload(upload: UploadFile, param: str, max_bytes: int) -> Upload:
    """The file as an image, or a 400 naming ``param``: over ``max_bytes``, not a PNG, JPEG
    or WebP, or larger than 4096 px on a side."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise bad_param(param, f"{param} is over the {max_bytes} byte limit")
    if not data:
        raise bad_param(param, f"{param} is empty")
    return await asyncio.to_thread(_decode, data, param)


def _decode(data: bytes, param: str) -> Upload:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise bad_param(param, f"{param} must be a PNG, JPEG or WebP image")
            if max(image.size) > MAX_SIDE:
                raise bad_param(param, f"{param} is over {MAX_SIDE} px on a side")
            image.load()
    except OpenAIError:
        raise
    except Exception:  # noqa: BLE001 - whatever PIL says, it is not an image we take
        raise bad_param(param, f"{param} is not an image (PNG, JPEG or WebP)") from None
    return Upload(image)


def mask_of(mask: Upload, image: Upload) -> Upload:
    """OpenAI's mask (transparent: change) as white-where-it-changes, or a 400."""
    if mask.size != image.size:
        raise bad_param(
            "mask", f"mask is {mask.size[0]}x{mask.size[1]}; it must be the image's size "
            f"({image.size[0]}x{image.size[1]})"
        )  # fmt: skip
    if "A" not in mask.image.getbands() and "transparency" not in mask.image.info:
        raise bad_param("mask", "mask needs an alpha channel: transparent where the image changes")
    alpha = mask.image.convert("RGBA").getchannel("A")
    return Upload(alpha.point(lambda a: 255 if a == 0 else 0))


async def store_edit(
    store: ArtifactStore, job_id: str, image_png: bytes, mask_png: bytes | None
) -> EditSource:
    """The uploads (encoded once, as PNG) under the job's prefix (deleted with the job by
    retention)."""
    try:
        image_uri = await asyncio.to_thread(store.put, job_id, "source.png", image_png)
        mask_uri = None
        if mask_png is not None:
            mask_uri = await asyncio.to_thread(store.put, job_id, "mask.png", mask_png)
    except (ArtifactError, ArtifactUnavailable) as exc:
        raise OpenAIError(
            503, "the image store did not answer; retry", kind="server_error"
        ) from exc
    return EditSource(image_uri=image_uri, mask_uri=mask_uri)
