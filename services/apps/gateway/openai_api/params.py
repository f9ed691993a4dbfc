"""What the OpenAI images API's requests ask for, mapped onto Lanes jobs: the request models
(as ``client.images.generate`` and ``client.images.edit`` send them), the intent a ``model``
or ``quality`` picks, the size, the output format, and the ``GenerationSpec`` of each image.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from schemas.spec import GenerationSpec
from services.apps.gateway.openai_api.errors import OpenAIError, bad_param, invalid
from services.config.routes import Routes

__all__ = [
    "ImageGenerateRequest",
    "ImageEditRequest",
    "Output",
    "intent_for",
    "size_of",
    "output_of",
    "specs_for",
    "INTENT_QUALITY",
]

INTENT_MODELS = {"lanes-preview": "preview", "lanes-draft": "draft", "lanes-final": "final"}
QUALITY_INTENT = {
    "low": "preview",
    "medium": "draft",
    "standard": "draft",
    "auto": "draft",
    "high": "final",
    "hd": "final",
    "xhigh": "final",
    "max": "final",
}
INTENT_QUALITY = {"preview": "low", "draft": "medium", "final": "high"}


class ImageGenerateRequest(BaseModel):
    """What ``client.images.generate`` sends; the SDK's ``extra_body`` carries Lanes' own
    fields (``seed``, ``negative_prompt``, ``text``, ``priority``, ``webhook_url``)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=2000)
    model: str | None = Field(None, max_length=200)
    n: StrictInt | None = Field(1, ge=1, le=10)
    size: str | None = Field(None, max_length=20)
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"] | None = (
        None
    )
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: StrictInt | None = Field(None, ge=0, le=100)
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = Field(None, max_length=200)
    safety_identifier: str | None = Field(None, max_length=200)
    complexity: Literal["low", "medium", "high"] | None = None  # accepted, not used
    # Animated and vector output: refused when asked for (400 naming the field).
    frame_count: StrictInt | None = Field(None, ge=1)
    frame_duration_ms: StrictInt | None = Field(None, ge=1)
    svg: dict[str, Any] | None = None
    stream: bool | None = None
    partial_images: StrictInt | None = Field(None, ge=0, le=3)
    # Lanes' own (extra_body)
    seed: StrictInt | None = Field(None, ge=0, le=2**32 - 11)
    negative_prompt: str | None = Field(None, max_length=1000)
    text: str | None = Field(None, max_length=200)
    priority: Literal["low", "normal", "high"] | None = None
    webhook_url: str | None = Field(None, max_length=2000)


class ImageEditRequest(ImageGenerateRequest):
    """The form fields of ``client.images.edit`` (multipart: numbers and booleans arrive as
    text, so they are read as such); the image and mask are files beside them."""

    n: int | None = Field(1, ge=1, le=10)
    frame_count: int | None = Field(None, ge=1)
    frame_duration_ms: int | None = Field(None, ge=1)
    output_compression: int | None = Field(None, ge=0, le=100)
    partial_images: int | None = Field(None, ge=0, le=3)
    seed: int | None = Field(None, ge=0, le=2**32 - 11)
    input_fidelity: Literal["high", "low"] | None = None


def parse_form(fields: dict[str, Any]) -> ImageEditRequest:
    try:
        return ImageEditRequest.model_validate(fields)
    except ValidationError as exc:
        raise invalid(exc.errors()) from None


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
        raise bad_param("size", f"size {req.size!r} is not WIDTHxHEIGHT or auto") from None
    for v in (width, height):
        if not 64 <= v <= 2048 or v % 8:
            raise bad_param(
                "size", f"size {req.size!r}: each side must be a multiple of 8 from 64 to 2048"
            )
    return width, height


class Output(BaseModel):
    """How the images come back: as ``data[]`` (b64 or URL) or as a stream of events."""

    response_format: Literal["b64_json", "url"]
    format: Literal["png", "jpeg", "webp"]
    compression: int | None
    partial_images: int  # streaming: how many partial images (0-3)
    stream: bool


def output_of(req: ImageGenerateRequest) -> Output:
    """The answer's form, refusing what these lanes cannot give."""
    fmt = req.output_format or "png"
    response_format = req.response_format or "b64_json"
    if req.frame_count not in (None, 1):
        raise bad_param("frame_count", "animated images are not supported: the lanes render stills")
    if req.svg is not None:
        raise bad_param("svg", "vector output is not supported: the lanes render raster images")
    if req.background == "transparent":
        raise bad_param(
            "background", "transparent backgrounds are not supported: the lanes render opaque"
        )
    if req.output_compression is not None and fmt == "png":
        raise bad_param("output_compression", "output_compression applies to jpeg and webp")
    if response_format == "url" and fmt != "png":
        raise bad_param("output_format", "image URLs serve PNG; ask for b64_json for jpeg/webp")
    if req.stream and (req.n or 1) > 1:
        raise bad_param("n", "a stream carries one image: n must be 1 with stream")
    if req.stream and response_format == "url":
        raise bad_param("response_format", "a stream carries b64_json images, not URLs")
    return Output(
        response_format=response_format,
        format=fmt,
        compression=req.output_compression,
        partial_images=(req.partial_images or 0) if req.stream else 0,
        stream=bool(req.stream),
    )


def specs_for(
    req: ImageGenerateRequest, intent: str, tenant: str, partial_images: int = 0
) -> list[GenerationSpec]:
    """One spec per image (``n``), seeds ``seed + i``."""
    size = size_of(req)
    fields: dict[str, Any] = {
        "prompt": req.prompt,
        "intent": intent,
        "tenant": tenant,
        "partial_images": partial_images,
        "metadata": {
            "api": "openai-images",
            **{k: v for k in ("user", "safety_identifier") if (v := getattr(req, k))},
        },
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
            raise invalid(exc.errors()) from None
    return out
