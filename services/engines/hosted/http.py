"""Outbound HTTP for hosted engines: only to the configured hosts, bounded retries.

- Every request (redirect hops included) goes to the model's ``base_url`` host or one of
  its ``download_hosts``; anything else is refused before it is sent.
- Server errors (5xx), timeouts and connection errors are retried with exponential backoff
  and jitter, at most ``max_retries`` times, then raised as ``ProviderFailed``. Every other
  answer goes back to the adapter, which knows what the provider meant by it.
- The API key travels in a header built per request from a ``SecretStr``; it is never
  logged, nor put in an exception's message.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from services.exceptions import Interrupted, ProviderFailed

__all__ = ["ProviderHttp", "RefusedHost", "retry_after_s", "is_loopback_host"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def is_loopback_host(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


class RefusedHost(ProviderFailed):
    """A call to a host that is not the model's base_url host nor a download host."""


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), if the answer has one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ProviderHttp:
    def __init__(
        self,
        base_url: str,
        *,
        download_hosts: tuple[str, ...] = (),
        timeout_s: float = 90.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).hostname or ""
        self.allowed = {self.host, *download_hosts}
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            follow_redirects=False,
            event_hooks={"request": [self._check_host]},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def _check_host(self, request: httpx.Request) -> None:
        host = request.url.host
        if host not in self.allowed and not any(host.endswith(f".{h}") for h in self.allowed):
            raise RefusedHost(f"refused a call to {host!r}: not a configured host of this model")

    async def aclose(self) -> None:
        await self.client.aclose()

    def backoff(self, attempt: int) -> float:
        """Exponential from ``backoff_s`` with full jitter on the upper half."""
        base = self.backoff_s * 2**attempt
        return float(min(30.0, base / 2 + random.uniform(0, base / 2)))

    async def send(
        self,
        method: str,
        url: str,
        *,
        should_stop: Callable[[], bool] | None = None,
        follow_redirects: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """The provider's answer to one request, after retrying server errors and timeouts."""
        last = ""
        for attempt in range(self.max_retries + 1):
            if should_stop is not None and should_stop():
                raise Interrupted(0)  # canceled before the call was sent
            try:
                response = await self.client.request(
                    method, url, follow_redirects=follow_redirects, **kwargs
                )
            except RefusedHost:
                raise
            except httpx.TimeoutException as exc:
                last = f"timed out ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__})"
            else:
                if response.status_code < 500:
                    return response
                last = f"HTTP {response.status_code}"
            if attempt < self.max_retries:
                await asyncio.sleep(self.backoff(attempt))
        raise ProviderFailed(
            f"{self.host}: {last} after {self.max_retries + 1} attempts",
            status=None,
        )
