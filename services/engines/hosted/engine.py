"""What every hosted engine shares: the Engine interface over one provider call per job.

- ``generate`` renders each request with one call (hosted lanes batch 1: providers take
  one prompt per call). Many calls are in flight on one event loop; none blocks it.
- Cancel: checked before every call is sent (and before every retry).
- Backpressure: a ``Throttled`` answer (429, RESOURCE_EXHAUSTED, inflight_limit) closes the
  engine until the provider's retry time (retryDelay, Retry-After, else exponential
  backoff); the job waits for it and is sent again, never dropped. While closed, the
  worker's cap for this engine is 0: its partitions pause and jobs wait in Kafka.
- ``ProviderUnavailable`` (a wrong key, no funds, no access, a model it no longer serves)
  pauses the engine for ``probe_s``; calls in that time fail at once with the same reason
  (the worker sends them to the lane's fallback), or, with ``ctx.wait_if_unavailable``
  (no fallback), wait for the next probe.
- Output URLs are downloaded at once; one that has already expired (403/404/410) costs a
  fresh call, within the same retry budget.
- Cost: the model's price per image (``price_usd``, else the list price for its variant).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
from PIL import Image, UnidentifiedImageError
from pydantic import SecretStr

from services.engines.engine import RenderContext, RenderOutput, RenderRequest, check_inputs
from services.engines.hosted.http import ProviderHttp, is_loopback_host
from services.engines.hosted.prices import list_price
from services.engines.hosted.sizes import letterbox
from services.exceptions import (
    Interrupted,
    ProviderError,
    ProviderFailed,
    ProviderUnavailable,
    Throttled,
)

__all__ = ["HostedModel", "HostedEngine", "Drawn", "ExpiredOutput"]

log = structlog.get_logger("lanes.hosted")


@dataclass(frozen=True)
class HostedModel:
    """A hosted model as the routes file names it (the key already read from its env)."""

    name: str
    version: str
    provider: str
    model_id: str
    base_url: str
    api_key: SecretStr
    download_hosts: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    price_usd: float | None = None
    timeout_s: float = 90.0
    max_retries: int = 2
    probe_s: float = 60.0
    refine: bool = False


@dataclass(frozen=True)
class Drawn:
    """One provider image, and the price variant it was drawn at (e.g. Gemini's 4K)."""

    image: Image.Image
    variant: str | None = None


class ExpiredOutput(ProviderError):
    """An output URL that answered 403/404/410 when downloaded: call again."""


class HostedEngine:
    provider = "hosted"
    on_device = False
    inpaints = False  # no provider here takes a mask
    footprint_bytes = 0
    batch_limit: int | None = 1
    # Throttle backoff when the provider gave no retry time: doubling from here to the cap.
    throttle_backoff_s = 2.0
    throttle_backoff_cap_s = 60.0

    def __init__(self, model: HostedModel, on_call: Callable[[str], None] | None = None) -> None:
        scheme, host = urlsplit(model.base_url).scheme, urlsplit(model.base_url).hostname or ""
        if scheme != "https" and not is_loopback_host(host):
            raise ValueError(
                f"model {model.name!r}: base_url must be https (a key is sent to it); "
                f"plain http only to a loopback host, got {model.base_url!r}"
            )
        self.model = model
        self.name = model.name
        self.version = model.version
        self.refine = model.refine
        self.device = host
        self.http = ProviderHttp(
            model.base_url,
            download_hosts=model.download_hosts,
            timeout_s=model.timeout_s,
            max_retries=model.max_retries,
        )
        self.on_call = on_call  # the worker's metrics: one outcome per provider answer
        self.open_at = 0.0  # monotonic time before which no call is sent (throttled)
        self.throttle_reason: str | None = None
        self.throttles = 0  # consecutive throttled answers (backoff without a retry time)
        self.unavailable: str | None = None
        self.unavailable_until = 0.0

    # ---- state the worker reads ---------------------------------------------------------

    def paused_for(self) -> float:
        """Seconds until calls go out again (0: open)."""
        now = time.monotonic()
        return max(0.0, self.open_at - now, self.unavailable_until - now)

    def decode(self, latents: Any) -> list[Image.Image]:
        """No latents leave a provider: no partial images."""
        return []

    def throttled(self) -> bool:
        """The provider's retry time has not passed: nothing is sent."""
        return time.monotonic() < self.open_at

    def refusing(self) -> bool:
        """The provider refused our calls (key, funds, model) and the next probe is not due."""
        return self.unavailable is not None and time.monotonic() < self.unavailable_until

    @property
    def state(self) -> str | None:
        """For heartbeats and ``lanes ops status``: why the engine is not calling now."""
        now = time.monotonic()
        if self.refusing():
            return f"paused: {self.unavailable} (next probe in {self.unavailable_until - now:.0f}s)"
        if self.throttled():
            return f"throttled: {self.throttle_reason} (resumes in {self.open_at - now:.1f}s)"
        return None

    def _throttle(self, exc: Throttled) -> None:
        self.throttles += 1
        delay = exc.retry_after_s
        if delay <= 0:
            delay = min(
                self.throttle_backoff_cap_s, self.throttle_backoff_s * 2 ** (self.throttles - 1)
            )
        self.open_at = max(self.open_at, time.monotonic() + delay)
        self.throttle_reason = str(exc)[:200]
        log.warning("provider_throttled", model=self.name, retry_in_s=round(delay, 2))

    def _refused(self, exc: ProviderUnavailable) -> None:
        self.unavailable = str(exc)[:300]
        self.unavailable_until = time.monotonic() + self.model.probe_s
        log.error("provider_unavailable", model=self.name, reason=self.unavailable)

    def _record(self, outcome: str) -> None:
        if self.on_call is not None:
            self.on_call(outcome)

    # ---- the Engine interface -------------------------------------------------------------

    async def generate(
        self, reqs: Sequence[RenderRequest], ctx: RenderContext
    ) -> list[RenderOutput]:
        return list(await asyncio.gather(*(self._one(r, ctx) for r in reqs)))

    async def _wait_open(self, ctx: RenderContext) -> None:
        while (wait := self.paused_for()) > 0:
            if ctx.should_stop():
                raise Interrupted(0)
            if self.refusing() and not ctx.wait_if_unavailable:
                raise ProviderUnavailable(str(self.unavailable))
            await asyncio.sleep(min(wait, 0.25))

    async def _one(self, req: RenderRequest, ctx: RenderContext) -> RenderOutput:
        check_inputs(req)
        if (req.init_image is not None) != self.refine:
            kind = "refine" if self.refine else "text-to-image"
            raise ValueError(f"this is a {kind} engine; the request does not match it")
        expired = 0
        while True:
            await self._wait_open(ctx)
            if ctx.should_stop():
                raise Interrupted(0)  # canceled before the call was sent
            started, began = time.perf_counter(), time.time()
            try:
                drawn = await self.draw(req, ctx.should_stop)
            except Throttled as exc:
                self._record("throttled")
                self._throttle(exc)
                continue  # the same job again once the provider's retry time has passed
            except ExpiredOutput as exc:
                self._record("expired_url")
                expired += 1
                if expired > self.model.max_retries:
                    raise ProviderFailed(f"{exc} ({expired} times)") from exc
                continue
            except ProviderUnavailable as exc:
                self._record("unavailable")
                self._refused(exc)
                if ctx.wait_if_unavailable:
                    continue
                raise
            except ProviderError as exc:
                self._record(exc.reason)
                raise
            self._record("ok")
            self.throttles = 0
            self.unavailable = None
            elapsed = (time.perf_counter() - started) * 1000
            return RenderOutput(
                letterbox(drawn.image, req.width, req.height),
                elapsed,
                1,
                started_at=began,
                cost_usd=self.price(drawn.variant),
                provider_size=drawn.image.size,
            )

    # ---- what each provider's adapter implements --------------------------------------

    async def draw(self, req: RenderRequest, should_stop: Callable[[], bool]) -> Drawn:
        raise NotImplementedError

    def price(self, variant: str | None) -> float | None:
        if self.model.price_usd is not None:
            return self.model.price_usd
        return list_price(self.model.provider, self.model.model_id, variant)

    async def aclose(self) -> None:
        await self.http.aclose()

    # ---- helpers for adapters ---------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.http.base_url}{path}"

    async def download(self, url: str, should_stop: Callable[[], bool]) -> Image.Image:
        response = await self.http.send("GET", url, should_stop=should_stop, follow_redirects=True)
        if response.status_code in (403, 404, 410):
            raise ExpiredOutput(
                f"output URL answered {response.status_code} (expired before download)",
                status=response.status_code,
            )
        if response.status_code != 200:
            raise ProviderFailed(f"output download answered {response.status_code}")
        return decode_image(response.content)


def decode_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ProviderFailed(f"the provider's image cannot be decoded: {exc}") from exc
    return image
