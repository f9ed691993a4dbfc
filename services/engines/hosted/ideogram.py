"""Ideogram: the legacy ``POST /generate`` (V_2_TURBO, V_2...) and ``POST
/v1/ideogram-v3/generate`` (3.0, multipart). Header ``Api-Key``; synchronous.

Both answer ``{"created", "data": [{"url", "prompt", "resolution", "is_image_safe",
"seed", "style_type"}]}``; the URL expires, so it is downloaded at once. An unsafe image is
a 200 with ``is_image_safe: false`` and no URL. Errors: 400 (the request: invalid), 401
(key), 402 (``reject_reason`` insufficient_funds or daily_limit), 422 (safety), 429
(``inflight_limit``, about 10 images in flight per organisation; no retry time given: the
engine backs off).

Passed through: the seed (Ideogram's range is 0..2^31-1: the job's seed modulo 2^31), the
negative prompt, ``num_images`` 1. ``options`` in the routes file: ``magic_prompt`` (OFF by
default: the prompt as the client wrote it, its text exactly), ``style_type``, and for 3.0
``rendering_speed`` (FLASH, TURBO, DEFAULT, QUALITY; DEFAULT by default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from services.engines.engine import RenderRequest
from services.engines.hosted.engine import Drawn, HostedEngine
from services.engines.hosted.http import retry_after_s
from services.engines.hosted.sizes import closest_ratio
from services.exceptions import (
    ProviderFailed,
    ProviderRejected,
    ProviderUnavailable,
    SafetyBlocked,
    Throttled,
)

__all__ = ["IdeogramLegacy", "IdeogramV3", "RATIOS"]

# Aspect ratios both APIs take (legacy spells them ASPECT_16_9, 3.0 spells them 16x9).
RATIOS = [
    (1, 1), (16, 9), (9, 16), (4, 3), (3, 4), (3, 2), (2, 3), (16, 10), (10, 16),
    (3, 1), (1, 3), (2, 1), (1, 2), (5, 4), (4, 5),
]  # fmt: skip
LEGACY_RATIOS = [r for r in RATIOS if r not in ((2, 1), (1, 2), (5, 4), (4, 5))]
SEED_RANGE = 2**31


class _Ideogram(HostedEngine):
    provider = "ideogram"

    def headers(self) -> dict[str, str]:
        return {"Api-Key": self.model.api_key.get_secret_value()}

    def option(self, name: str, default: Any = None) -> Any:
        return self.model.options.get(name, default)

    async def answer(self, response: httpx.Response, should_stop: Callable[[], bool]) -> Drawn:
        status = response.status_code
        body = _json(response)
        reason = str(body.get("reject_reason") or body.get("error") or body.get("detail") or "")
        if status == 200:
            data = body.get("data") or []
            if not data:
                raise ProviderFailed("Ideogram answered 200 with no image")
            item = data[0]
            if item.get("is_image_safe") is False or not item.get("url"):
                raise SafetyBlocked("Ideogram's safety check rejected the image (is_image_safe)")
            image = await self.download(item["url"], should_stop)
            return Drawn(image, self.variant())
        if status == 429:
            raise Throttled(
                f"Ideogram 429 {reason or 'too many requests'}", retry_after_s(response) or 0.0
            )
        if status == 422:
            raise SafetyBlocked(f"Ideogram refused the prompt (422): {reason}"[:300], status=422)
        if status in (401, 402, 403):
            raise ProviderUnavailable(
                f"Ideogram {status}: {reason or 'refused'}"[:300], status=status
            )
        if status == 404:
            raise ProviderUnavailable(
                f"Ideogram 404: model or endpoint not found {reason}"[:300], status=404
            )
        raise ProviderRejected(f"Ideogram {status}: {reason}"[:300], status=status)

    def variant(self) -> str | None:
        return None


class IdeogramLegacy(_Ideogram):
    """``POST /generate`` with ``{"image_request": {...}}``."""

    async def draw(self, req: RenderRequest, should_stop: Callable[[], bool]) -> Drawn:
        w, h = closest_ratio(req.width, req.height, LEGACY_RATIOS)
        image_request: dict[str, Any] = {
            "prompt": req.prompt,
            "model": self.model.model_id,
            "aspect_ratio": f"ASPECT_{w}_{h}",
            "seed": req.seed % SEED_RANGE,
            "num_images": 1,
            "magic_prompt_option": self.option("magic_prompt", "OFF"),
        }
        if req.negative_prompt:
            image_request["negative_prompt"] = req.negative_prompt
        if self.option("style_type"):
            image_request["style_type"] = self.option("style_type")
        response = await self.http.send(
            "POST",
            self.url("/generate"),
            json={"image_request": image_request},
            headers=self.headers(),
            should_stop=should_stop,
        )
        return await self.answer(response, should_stop)


class IdeogramV3(_Ideogram):
    """``POST /v1/ideogram-v3/generate``, a multipart form."""

    def variant(self) -> str | None:
        return str(self.option("rendering_speed", "DEFAULT"))

    async def draw(self, req: RenderRequest, should_stop: Callable[[], bool]) -> Drawn:
        w, h = closest_ratio(req.width, req.height, RATIOS)
        fields: dict[str, str] = {
            "prompt": req.prompt,
            "seed": str(req.seed % SEED_RANGE),
            "num_images": "1",
            "aspect_ratio": f"{w}x{h}",
            "rendering_speed": str(self.variant()),
            "magic_prompt": str(self.option("magic_prompt", "OFF")),
        }
        if req.negative_prompt:
            fields["negative_prompt"] = req.negative_prompt
        if self.option("style_type"):
            fields["style_type"] = str(self.option("style_type"))
        response = await self.http.send(
            "POST",
            self.url("/v1/ideogram-v3/generate"),
            # (None, value): a plain form field, sent as multipart/form-data as the API asks.
            files={k: (None, v) for k, v in fields.items()},
            headers=self.headers(),
            should_stop=should_stop,
        )
        return await self.answer(response, should_stop)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"error": response.text[:200]}
    return body if isinstance(body, dict) else {"error": str(body)[:200]}
