"""Ideogram's API as documented: legacy ``POST /generate`` and ``POST
/v1/ideogram-v3/generate`` (multipart), header ``Api-Key``, expiring output URLs."""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.contract_servers.common import Behaviour, add_control, picture, pixels, rendering

LEGACY_MODELS = {"V_1", "V_1_TURBO", "V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO"}
LEGACY_RATIOS = {
    "ASPECT_1_1", "ASPECT_10_16", "ASPECT_16_10", "ASPECT_9_16", "ASPECT_16_9",
    "ASPECT_3_2", "ASPECT_2_3", "ASPECT_4_3", "ASPECT_3_4", "ASPECT_1_3", "ASPECT_3_1",
}  # fmt: skip
V3_RATIOS = {
    "1x3", "3x1", "1x2", "2x1", "9x16", "16x9", "10x16", "16x10",
    "2x3", "3x2", "3x4", "4x3", "4x5", "5x4", "1x1",
}  # fmt: skip
MAGIC = {"AUTO", "ON", "OFF"}
STYLES = {"AUTO", "GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME", "FICTION"}
SPEEDS = {"FLASH", "TURBO", "DEFAULT", "QUALITY"}
LEGACY_FIELDS = {
    "prompt", "model", "aspect_ratio", "seed", "num_images", "negative_prompt",
    "magic_prompt_option", "style_type", "resolution", "color_palette",
}  # fmt: skip
V3_FIELDS = {
    "prompt", "seed", "negative_prompt", "num_images", "resolution", "aspect_ratio",
    "rendering_speed", "magic_prompt", "style_type", "style_codes", "color_palette",
}  # fmt: skip
INFLIGHT_LIMIT = 10  # images in flight per organisation
URL_TTL_S = 60.0


def _error(status: int, message: str, reject_reason: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if reject_reason:
        body["reject_reason"] = reject_reason
    return JSONResponse(body, status_code=status)


def ideogram_app(api_key: str) -> tuple[FastAPI, Behaviour]:
    app = FastAPI()
    b = Behaviour(api_key=api_key)
    images: dict[str, tuple[float, bytes]] = {}  # token -> (expires at, png)
    add_control(app, b)

    def refused(request: Request) -> JSONResponse | None:
        if request.headers.get("Api-Key") != b.api_key:
            return _error(401, "Invalid API key")
        if b.down:
            return _error(500, "Internal server error")
        return None

    def _result(
        request: Request, prompt: str, seed: int, ratio: tuple[int, int], style: str | None
    ) -> JSONResponse:
        if "[unsafe-prompt]" in prompt:
            return _error(422, "Prompt failed the safety check")
        w, h = pixels(ratio, 1024)
        unsafe = "[unsafe]" in prompt
        token = secrets.token_urlsafe(12)
        expired = b.once("[expired]", prompt)
        images[token] = (0.0 if expired else time.time() + URL_TTL_S, picture(prompt, w, h, seed))
        base = str(request.base_url).rstrip("/")
        item = {
            "url": None if unsafe else f"{base}/api/images/ephemeral/{token}.png",
            "prompt": prompt,
            "resolution": f"{w}x{h}",
            "is_image_safe": not unsafe,
            "seed": seed,
            "style_type": style or "GENERAL",
        }
        return JSONResponse({"created": "2026-11-30T12:00:00Z", "data": [item]})

    async def _guarded(
        request: Request, prompt: str, fields: dict[str, Any]
    ) -> JSONResponse | None:
        b.calls.append({"path": request.url.path, "fields": fields, "at": time.time()})
        if (bad := refused(request)) is not None:
            return bad
        if b.take_throttle() or b.once("[429]", prompt):
            return _error(429, "Too many requests in flight", "inflight_limit")
        if b.in_flight >= INFLIGHT_LIMIT:
            return _error(429, "Too many images in flight", "inflight_limit")
        if b.once("[500]", prompt):
            return _error(500, "Internal server error")
        return None

    @app.post("/generate")
    async def generate_legacy(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Body must be JSON")
        if set(body) != {"image_request"} or not isinstance(body["image_request"], dict):
            return _error(400, 'Body must be {"image_request": {...}}')
        r = body["image_request"]
        problems = [f"unknown field {k}" for k in r if k not in LEGACY_FIELDS]
        if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            problems.append("prompt is required")
        if r.get("model", "V_2") not in LEGACY_MODELS:
            problems.append(f"model must be one of {sorted(LEGACY_MODELS)}")
        if r.get("aspect_ratio", "ASPECT_1_1") not in LEGACY_RATIOS:
            problems.append("aspect_ratio is not a valid ASPECT_W_H")
        if not (isinstance(r.get("num_images", 1), int) and 1 <= r.get("num_images", 1) <= 8):
            problems.append("num_images must be 1-8")
        seed = r.get("seed", 0)
        if not (isinstance(seed, int) and 0 <= seed <= 2147483647):
            problems.append("seed must be an integer 0-2147483647")
        if r.get("magic_prompt_option", "AUTO") not in MAGIC:
            problems.append("magic_prompt_option must be AUTO, ON or OFF")
        if r.get("style_type", "AUTO") not in STYLES:
            problems.append("style_type is not valid")
        if problems:
            return _error(400, "; ".join(problems))
        if (bad := await _guarded(request, r["prompt"], r)) is not None:
            return bad
        if r.get("model") in b.retired:
            return _error(404, f"model {r.get('model')} not found")
        async with rendering(b):
            ratio = tuple(int(x) for x in r.get("aspect_ratio", "ASPECT_1_1").split("_")[1:])
            return _result(request, r["prompt"], seed, ratio, r.get("style_type"))  # type: ignore[arg-type]

    @app.post("/v1/ideogram-v3/generate")
    async def generate_v3(request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(400, "Request must be multipart/form-data")
        form = await request.form()
        f = {k: str(v) for k, v in form.items()}
        problems = [f"unknown field {k}" for k in f if k not in V3_FIELDS]
        if not f.get("prompt", "").strip():
            problems.append("prompt is required")
        if "resolution" in f and "aspect_ratio" in f:
            problems.append("give resolution or aspect_ratio, not both")
        if f.get("aspect_ratio", "1x1") not in V3_RATIOS:
            problems.append("aspect_ratio must be like 16x9")
        if f.get("rendering_speed", "DEFAULT") not in SPEEDS:
            problems.append("rendering_speed must be FLASH, TURBO, DEFAULT or QUALITY")
        if f.get("magic_prompt", "AUTO") not in MAGIC:
            problems.append("magic_prompt must be AUTO, ON or OFF")
        try:
            seed = int(f.get("seed", "0"))
            n = int(f.get("num_images", "1"))
        except ValueError:
            seed, n = -1, 0
        if not 0 <= seed <= 2147483647 or not 1 <= n <= 8:
            problems.append("seed must be 0-2147483647 and num_images 1-8")
        if problems:
            return _error(400, "; ".join(problems))
        if (bad := await _guarded(request, f["prompt"], f)) is not None:
            return bad
        if "V_3" in b.retired:
            return _error(404, "model V_3 not found")
        async with rendering(b):
            ratio = tuple(int(x) for x in f.get("aspect_ratio", "1x1").split("x"))
            return _result(request, f["prompt"], seed, ratio, f.get("style_type"))  # type: ignore[arg-type]

    @app.get("/api/images/ephemeral/{name}")
    async def image(name: str) -> Response:
        entry = images.get(name.removesuffix(".png"))
        if entry is None or entry[0] < time.time():
            return Response(status_code=403, content=b"Request has expired")
        return Response(entry[1], media_type="image/png")

    return app, b
