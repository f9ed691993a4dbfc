"""The Gemini API's image endpoints as documented: ``:generateContent`` (Gemini image
models) and ``:predict`` (Imagen), header ``x-goog-api-key``, Google's error shape."""

from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.contract_servers.common import Behaviour, add_control, picture, pixels, rendering

GEMINI_MODELS = {"gemini-3-pro-image", "gemini-3.1-flash-image", "gemini-2.5-flash-image"}
IMAGEN_MODELS = {"imagen-4.0-fast-generate-001", "imagen-4.0-generate-001"}
GEMINI_RATIOS = {"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}
IMAGEN_RATIOS = {"1:1", "3:4", "4:3", "9:16", "16:9"}
SIZES = {"1K": 1024, "2K": 2048, "4K": 4096}
CONFIG_FIELDS = {
    "responseModalities", "imageConfig", "seed", "temperature", "candidateCount",
    "topP", "topK", "maxOutputTokens",
}  # fmt: skip


def google_error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=code)


def google_app(api_key: str, scale: float = 1.0) -> tuple[FastAPI, Behaviour]:
    """``scale`` shrinks the images drawn (a test's 1K is 1024 * scale px on its long edge)."""
    app = FastAPI()
    b = Behaviour(api_key=api_key)
    add_control(app, b)

    def throttled(retry_s: float) -> JSONResponse:
        return google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaMetric": "generativelanguage.googleapis.com/"
                                    "generate_content_free_tier_requests"}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                 "retryDelay": f"{retry_s:g}s"},
            ],
        )  # fmt: skip

    def gate(request: Request, model: str, known: set[str], prompt: str) -> JSONResponse | None:
        if request.headers.get("x-goog-api-key") != b.api_key:
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                  "domain": "googleapis.com"}],
            )  # fmt: skip
        if model not in known or model in b.retired:
            return google_error(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version v1beta, or is not supported",
            )
        if b.down or b.once("[500]", prompt):
            return google_error(500, "INTERNAL", "An internal error has occurred.")
        if b.take_throttle() or b.once("[429]", prompt):
            return throttled(b.retry_s)
        return None

    @app.post("/v1beta/models/{target}")
    async def call(target: str, request: Request) -> JSONResponse:
        model, _, verb = target.partition(":")
        try:
            body = await request.json()
        except ValueError:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if verb == "generateContent":
            return await generate_content(request, model, body)
        if verb == "predict":
            return await predict(request, model, body)
        return google_error(404, "NOT_FOUND", f"method {verb} not found")

    async def generate_content(request: Request, model: str, body: Any) -> JSONResponse:
        problems: list[str] = []
        contents = body.get("contents") if isinstance(body, dict) else None
        if not isinstance(contents, list) or not contents:
            problems.append("contents is required")
            contents = []
        texts, images = [], 0
        for content in contents:
            for part in content.get("parts") or []:
                if "text" in part:
                    texts.append(str(part["text"]))
                elif "inlineData" in part:
                    data = part["inlineData"]
                    if not data.get("mimeType", "").startswith("image/") or not data.get("data"):
                        problems.append("inlineData needs mimeType and data")
                    base64.b64decode(data.get("data", ""), validate=True)
                    images += 1
                else:
                    problems.append(f"unknown part {sorted(part)}")
        config = body.get("generationConfig") or {}
        problems += [
            f"unknown generationConfig field {k}" for k in config if k not in CONFIG_FIELDS
        ]
        if "IMAGE" not in (config.get("responseModalities") or []):
            problems.append("responseModalities must include IMAGE for an image model")
        image_config = config.get("imageConfig") or {}
        ratio = image_config.get("aspectRatio", "1:1")
        size = image_config.get("imageSize", "1K")
        if ratio not in GEMINI_RATIOS:
            problems.append(f"aspectRatio {ratio} is not supported")
        if size not in SIZES:
            problems.append(f"imageSize must be 1K, 2K or 4K, got {size}")
        if problems:
            return google_error(400, "INVALID_ARGUMENT", "; ".join(problems))
        prompt = " ".join(texts)
        b.calls.append({"path": request.url.path, "body": body, "at": time.time()})
        if (refused := gate(request, model, GEMINI_MODELS, prompt)) is not None:
            return refused
        if "[unsafe-prompt]" in prompt:
            return JSONResponse({"promptFeedback": {"blockReason": "SAFETY"}})
        async with rendering(b):
            if "[unsafe]" in prompt:
                candidate: dict[str, Any] = {
                    "content": {"role": "model", "parts": [{"text": "I can't draw that."}]},
                    "finishReason": "IMAGE_SAFETY",
                }
            elif "[no-image]" in prompt:
                candidate = {
                    "content": {"role": "model", "parts": [{"text": "Here is a poem."}]},
                    "finishReason": "NO_IMAGE",
                }
            else:
                w, h = pixels(tuple(int(x) for x in ratio.split(":")), int(SIZES[size] * b_scale))  # type: ignore[arg-type]
                png = picture(prompt, w, h, int(config.get("seed", 0)))
                candidate = {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "Here is your image."},
                            {"inlineData": {"mimeType": "image/png",
                                            "data": base64.b64encode(png).decode()}},
                        ],
                    },
                    "finishReason": "STOP",
                }  # fmt: skip
            return JSONResponse(
                {"candidates": [candidate], "usageMetadata": {"promptTokenCount": len(prompt)}}
            )

    async def predict(request: Request, model: str, body: Any) -> JSONResponse:
        problems: list[str] = []
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or len(instances) != 1 or "prompt" not in instances[0]:
            problems.append("instances must be one {prompt}")
        params = (body or {}).get("parameters") or {}
        count = params.get("sampleCount", 4)
        if not (isinstance(count, int) and 1 <= count <= 4):
            problems.append("sampleCount must be 1-4")
        ratio = params.get("aspectRatio", "1:1")
        if ratio not in IMAGEN_RATIOS:
            problems.append(f"aspectRatio {ratio} is not supported")
        if problems:
            return google_error(400, "INVALID_ARGUMENT", "; ".join(problems))
        prompt = str(instances[0]["prompt"])  # type: ignore[index]
        b.calls.append({"path": request.url.path, "body": body, "at": time.time()})
        if (refused := gate(request, model, IMAGEN_MODELS, prompt)) is not None:
            return refused
        async with rendering(b):
            if "[unsafe]" in prompt:
                return JSONResponse({})  # filtered images are silently left out
            w, h = pixels(tuple(int(x) for x in ratio.split(":")), int(1024 * b_scale))  # type: ignore[arg-type]
            png = picture(prompt, w, h)
            predictions = [
                {"bytesBase64Encoded": base64.b64encode(png).decode(), "mimeType": "image/png"}
                for _ in range(count)
            ]
            return JSONResponse({"predictions": predictions})

    b_scale = scale
    return app, b
