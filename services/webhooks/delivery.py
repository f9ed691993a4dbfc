"""Outbound webhooks: Standard Webhooks signatures, SSRF guard, delivery with retries."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

from services.exceptions import RefusedTarget

__all__ = [
    "RefusedTarget",
    "Unresolvable",
    "resolve_target",
    "sign_headers",
    "SigningKeys",
    "WebhookSender",
    "AttemptResult",
    "retry_after_seconds",
    "backoff_delay",
    "webhook_id",
]


class Unresolvable(RefusedTarget):
    """The host does not resolve now (it may later: DNS can fail for a while)."""


def webhook_id(job_id: str, event: str) -> str:
    """Stable across retries and redeliveries, so receivers can deduplicate on it."""
    return f"msg_{job_id}_{event}"


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _forbidden(ip.ipv4_mapped)
    for attr in (
        "is_loopback",
        "is_private",
        "is_link_local",
        "is_multicast",
        "is_reserved",
        "is_unspecified",
    ):
        if getattr(ip, attr):
            return attr[3:].replace("_", "-")
    if not ip.is_global:
        return "non-global"
    return None


async def resolve_target(url: str, allowed_hosts: list[str]) -> str:
    """Resolve the URL's host once; return the address to connect to, or raise RefusedTarget."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedTarget(f"webhook URL must be http(s) with a host, got {url!r}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unresolvable(f"cannot resolve {host!r}: {exc}") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if host.lower() not in {h.lower() for h in allowed_hosts}:
        for ip in addresses:
            reason = _forbidden(ip)
            if reason:
                raise RefusedTarget(f"{host} resolves to {ip} ({reason}); not in the allowlist")
    return str(addresses[0])


def sign_headers(
    secrets: list[str], msg_id: str, body: str, at: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers; one ``v1,`` signature per secret (key rotation)."""
    at = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(Webhook(s).sign(msg_id, at, body) for s in secrets),
        "content-type": "application/json",
    }


@dataclass(frozen=True)
class SigningKeys:
    """Which secrets sign a delivery: the endpoint's own, else the current global one plus
    any previous ones still in rotation."""

    current: str
    previous: tuple[str, ...] = ()
    endpoints: dict[str, str] = field(default_factory=dict)  # origin -> secret

    def for_url(self, url: str) -> list[str]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower()
        own = self.endpoints.get(origin)
        return [own] if own else [self.current, *self.previous]


@dataclass(frozen=True)
class AttemptResult:
    outcome: str  # delivered | retry | failed (never retried: 410, refused, too large)
    status_code: int | None
    error: str | None
    retry_after_s: float | None = None  # the receiver's Retry-After, when it sent one


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_delay(
    attempt: int,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next attempt: exponential with equal jitter, never sooner than
    the receiver's Retry-After, at most ``cap_s``."""
    exp = min(cap_s, base_s * 2 ** (attempt - 1))
    delay = exp / 2 + (rng or random).uniform(0, exp / 2)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return float(min(cap_s, delay))


class WebhookSender:
    """One signed POST per call; the caller schedules retries (through a delay topic)."""

    def __init__(
        self,
        keys: SigningKeys,
        allowed_hosts: list[str],
        *,
        timeout_s: float = 15.0,
        max_body_bytes: int = 256 * 1024,
        prepare: Callable[[str], str] | None = None,
    ) -> None:
        self._keys = keys
        # Applied to the stored body at each attempt (the image URLs are signed as of the
        # send, so a retry or replay days later carries URLs that still work).
        self.prepare = prepare or (lambda body: body)
        self.allowed_hosts = allowed_hosts
        self.max_body_bytes = max_body_bytes
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _post_once(self, url: str, msg_id: str, body: str) -> httpx.Response:
        address = await resolve_target(url, self.allowed_hosts)
        parts = urlsplit(url)
        host_for_url = f"[{address}]" if ":" in address else address
        netloc = f"{host_for_url}:{parts.port}" if parts.port else host_for_url
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers = sign_headers(self._keys.for_url(url), msg_id, body)
        headers["host"] = parts.netloc.rsplit("@", 1)[-1]
        return await self.client.post(
            pinned,
            content=body.encode(),
            headers=headers,
            extensions={"sni_hostname": parts.hostname},
        )

    async def attempt(self, url: str, msg_id: str, body: str) -> AttemptResult:
        body = self.prepare(body)
        if len(body.encode()) > self.max_body_bytes:
            return AttemptResult(
                "failed",
                None,
                f"payload of {len(body.encode())} bytes is over "
                f"the {self.max_body_bytes}-byte limit",
            )
        try:
            response = await self._post_once(url, msg_id, body)
        except RefusedTarget as exc:
            return AttemptResult("failed", None, f"refused: {exc}")
        except httpx.HTTPError as exc:
            return AttemptResult("retry", None, f"{type(exc).__name__}: {exc}"[:500])
        status = response.status_code
        if 200 <= status < 300:
            return AttemptResult("delivered", status, None)
        if status == 410:  # the receiver asked us to stop
            return AttemptResult("failed", status, "HTTP 410 Gone: endpoint retired")
        error = f"HTTP {status}"
        if 300 <= status < 400:
            error += f" redirect to {response.headers.get('location', '?')} (not followed)"
        return AttemptResult(
            "retry", status, error, retry_after_seconds(response.headers.get("retry-after"))
        )
