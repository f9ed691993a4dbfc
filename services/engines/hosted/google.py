"""Gemini API image models: ``:generateContent`` (Nano Banana Pro ``gemini-3-pro-image``
and its successors, e.g. ``gemini-3.1-flash-image``) and Imagen's ``:predict``. Header
``x-goog-api-key``.

generateContent: the prompt as a text part (a refine pass adds the previous image as an
``inlineData`` part: the model edits it), ``responseModalities: [TEXT, IMAGE]``,
``imageConfig: {aspectRatio, imageSize}``, and the job's seed in ``generationConfig.seed``.
The image comes back in ``candidates[].content.parts[].inlineData``. A blocked prompt is a
200 with ``promptFeedback.blockReason`` or a safety ``finishReason`` (IMAGE_SAFETY...):
reason ``safety``. No image for another reason (NO_IMAGE, OTHER...) fails the job with
reason ``no_image``. The API has no negative prompt: it is not sent.

:predict (Imagen 4 Fast): ``{"instances": [{"prompt"}], "parameters": {"sampleCount": 1,
"aspectRatio"}}`` answers ``{"predictions": [{"bytesBase64Encoded", "mimeType"}]}``;
filtered images are silently left out, so an empty answer is a safety block. Neither seed
nor negative prompt is sent (the Gemini API's Imagen takes neither). Google shut the
Imagen models down from 2026-08: a routes-file ``alias_of`` moves the name to the
successor.

Errors are ``{"error": {"code", "status", "message", "details"}}`` with no Retry-After:
RESOURCE_EXHAUSTED waits for ``RetryInfo.retryDelay``; a key the API rejects
(``API_KEY_INVALID``, 401, 403) or a model it does not serve (404) pauses the engine.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from typing import Any

import httpx

from services.engines.engine import RenderRequest
from services.engines.hosted.engine import Drawn, HostedEngine, decode_image
from services.engines.hosted.sizes import closest_ratio, size_tier
from services.exceptions import (
    ProviderError,
    ProviderFailed,
    ProviderRejected,
    ProviderUnavailable,
    SafetyBlocked,
    Throttled,
)

__all__ = ["GeminiImage", "ImagenPredict", "google_error"]

GEMINI_RATIOS = [
    (1, 1), (2, 3), (3, 2), (3, 4), (4, 3), (4, 5), (5, 4), (9, 16), (16, 9), (21, 9),
]  # fmt: skip
IMAGEN_RATIOS = [(1, 1), (3, 4), (4, 3), (9, 16), (16, 9)]
SIZES = [("1K", 1024), ("2K", 2048), ("4K", 4096)]
SAFETY_FINISH = {
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_RECITATION",
}
_DELAY = re.compile(r"^\s*([0-9.]+)s\s*$")


def google_error(response: httpx.Response) -> ProviderError:
    """The Lanes error for a Google API error answer."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        error = {}
    status = str(error.get("status", ""))
    message = str(error.get("message", response.text[:200]))
    details = error.get("details") or []
    code = response.status_code
    text = f"{code} {status}: {message}"[:300]
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        delay = 0.0
        for d in details:
            if str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
                m = _DELAY.match(str(d.get("retryDelay", "")))
                delay = float(m.group(1)) if m else 0.0
        return Throttled(text, delay, status=code)
    reasons = {str(d.get("reason", "")) for d in details if isinstance(d, dict)}
    if code in (401, 403) or "API_KEY_INVALID" in reasons or status == "FAILED_PRECONDITION":
        return ProviderUnavailable(text, status=code)
    if code == 404:
        return ProviderUnavailable(f"model not found: {text}"[:300], status=code)
    return ProviderRejected(text, status=code)


class _Google(HostedEngine):
    def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.model.api_key.get_secret_value()}

    async def post(
        self, verb: str, body: dict[str, Any], should_stop: Callable[[], bool]
    ) -> dict[str, Any]:
        response = await self.http.send(
            "POST",
            self.url(f"/v1beta/models/{self.model.model_id}:{verb}"),
            json=body,
            headers=self.headers(),
            should_stop=should_stop,
        )
        if response.status_code != 200:
            raise google_error(response)
        try:
            answer = response.json()
        except ValueError as exc:
            raise ProviderFailed("the provider answered 200 with a body that is not JSON") from exc
        if not isinstance(answer, dict):
            raise ProviderFailed("the provider answered 200 with an unexpected body")
        return answer


class GeminiImage(_Google):
    provider = "gemini"

    def image_size(self, req: RenderRequest) -> str:
        return str(self.model.options.get("image_size") or size_tier(req.width, req.height, SIZES))

    async def draw(self, req: RenderRequest, should_stop: Callable[[], bool]) -> Drawn:
        w, h = closest_ratio(req.width, req.height, GEMINI_RATIOS)
        size = self.image_size(req)
        parts: list[dict[str, Any]] = [{"text": req.prompt}]
        if req.init_image is not None:
            buf = io.BytesIO()
            req.init_image.convert("RGB").save(buf, format="PNG")
            parts.append(
                {
                    "inlineData": {
                        "mimeType": "image/png",
                        "data": base64.b64encode(buf.getvalue()).decode(),
                    }
                }
            )
        body = {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {
                "responseModalities": ["TEXT", "IMAGE"],
                "imageConfig": {"aspectRatio": f"{w}:{h}", "imageSize": size},
                "seed": req.seed % 2**31,
            },
        }
        answer = await self.post("generateContent", body, should_stop)
        blocked = (answer.get("promptFeedback") or {}).get("blockReason")
        if blocked:
            raise SafetyBlocked(f"Gemini blocked the prompt: {blocked}")
        finish = None
        for candidate in answer.get("candidates") or []:
            finish = candidate.get("finishReason") or finish
            for part in (candidate.get("content") or {}).get("parts") or []:
                data = part.get("inlineData") or part.get("inline_data")
                if data and data.get("data"):
                    return Drawn(decode_image(base64.b64decode(data["data"])), size)
        if finish in SAFETY_FINISH:
            raise SafetyBlocked(f"Gemini withheld the image: finishReason {finish}")
        raise ProviderRejected(
            f"Gemini returned no image (finishReason {finish or 'none'})", reason="no_image"
        )


class ImagenPredict(_Google):
    provider = "imagen"

    async def draw(self, req: RenderRequest, should_stop: Callable[[], bool]) -> Drawn:
        w, h = closest_ratio(req.width, req.height, IMAGEN_RATIOS)
        body = {
            "instances": [{"prompt": req.prompt}],
            "parameters": {"sampleCount": 1, "aspectRatio": f"{w}:{h}"},
        }
        answer = await self.post("predict", body, should_stop)
        for prediction in answer.get("predictions") or []:
            if prediction.get("bytesBase64Encoded"):
                return Drawn(decode_image(base64.b64decode(prediction["bytesBase64Encoded"])))
        raise SafetyBlocked("Imagen left the image out (filtered by its safety filter)")
