"""Outbound webhooks: Standard Webhooks signatures, SSRF guard, delivery with retries."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

__all__ = [
    "RefusedTarget",
    "resolve_target",
    "sign_headers",
    "WebhookSender",
    "DeliveryResult",
    "webhook_id",
]


class RefusedTarget(Exception):
    """The URL points somewhere webhooks may not go (loopback, private, link-local...)."""


def webhook_id(job_id: str, event: str) -> str:
    """Stable across retries and redeliveries, so receivers can deduplicate on it."""
    return f"msg_{job_id}_{event}"


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _forbidden(ip.ipv4_mapped)
    for attr in ("is_loopback", "is_private", "is_link_local", "is_multicast", "is_reserved",
                 "is_unspecified"):
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
        raise RefusedTarget(f"cannot resolve {host!r}: {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if host.lower() not in {h.lower() for h in allowed_hosts}:
        for ip in addresses:
            reason = _forbidden(ip)
            if reason:
                raise RefusedTarget(f"{host} resolves to {ip} ({reason}); not in the allowlist")
    return str(addresses[0])


def sign_headers(secret: str, msg_id: str, body: str, at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
    }


@dataclass(frozen=True)
class DeliveryResult:
    outcome: str  # delivered | failed | refused
    attempts: int
    status_code: int | None
    error: str | None


class WebhookSender:
    def __init__(
        self,
        secret: str,
        allowed_hosts: list[str],
        *,
        timeout_s: float = 15.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        self._secret = secret
        self.allowed_hosts = allowed_hosts
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _post_once(self, url: str, msg_id: str, body: str) -> httpx.Response:
        address = await resolve_target(url, self.allowed_hosts)
        parts = urlsplit(url)
        host_for_url = f"[{address}]" if ":" in address else address
        netloc = f"{host_for_url}:{parts.port}" if parts.port else host_for_url
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers = sign_headers(self._secret, msg_id, body)
        headers["host"] = parts.netloc.rsplit("@", 1)[-1]
        return await self.client.post(
            pinned, content=body.encode(), headers=headers,
            extensions={"sni_hostname": parts.hostname},
        )

    async def deliver(self, url: str, msg_id: str, payload: dict[str, Any]) -> DeliveryResult:
        body = json.dumps(payload, separators=(",", ":"))
        error: str | None = None
        status: int | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = await self._post_once(url, msg_id, body)
                status = response.status_code
                if 200 <= status < 300:
                    return DeliveryResult("delivered", attempt, status, None)
                error = f"HTTP {status}"
                if status == 410:  # the receiver asked us to stop
                    return DeliveryResult("failed", attempt, status, error)
            except RefusedTarget as exc:
                return DeliveryResult("refused", attempt, None, str(exc))
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_attempts:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        return DeliveryResult("failed", self.max_attempts, status, error)
