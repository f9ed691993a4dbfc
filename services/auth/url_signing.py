"""Signed image URLs: fetchable with no key, unguessable, and short-lived.

A URL under ``<base>/v1/generations/<job id>/<rest>`` (an artifact, or the job's image)
gets ``?expires=<unix s>&sig=<hex HMAC-SHA256(key, "<job id>/<rest>\\n<expires>")>``.
The current key signs; the current and the previous keys verify (rotation: add the new key,
move the old one to ``previous`` for a TTL, then drop it). Each response and each webhook
send signs afresh, and never past the job's retention.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from services.config.settings import Settings

__all__ = ["UrlSigner", "BadSignature", "Expired", "URI_FIELDS", "url_signer"]

URI_FIELDS = frozenset({"uri", "artifact_uri", "rendered_uri", "image"})
MARKER = "/v1/generations/"


class BadSignature(Exception):
    """Unsigned, tampered, or signed for another path (403)."""


class Expired(Exception):
    """Signed correctly, but past its expiry (410)."""


class UrlSigner:
    def __init__(
        self, key: bytes, previous: Sequence[bytes] = (), *, ttl_s: float, retention_s: float
    ) -> None:
        self.key = key
        self.keys = (key, *previous)
        self.ttl_s = ttl_s
        self.retention_s = retention_s

    def _mac(self, key: bytes, resource: str, expires: int) -> str:
        return hmac.new(key, f"{resource}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def expiry(self, now: float | None = None, finished_at: datetime | str | None = None) -> int:
        """Now + TTL rounded up (a URL lives at least its TTL), but never after the job's
        images are deleted (its retention, rounded down)."""
        at = math.ceil((time.time() if now is None else now) + self.ttl_s)
        if finished_at is not None:
            end = finished_at if isinstance(finished_at, datetime) else _iso(finished_at)
            at = min(at, int(end.timestamp() + self.retention_s))
        return at

    def sign(self, url: str, expires: int) -> str:
        """``url`` (one of ours, unsigned) with ``expires`` and ``sig`` appended."""
        parts = urlsplit(url)
        _, marker, resource = parts.path.partition(MARKER)
        if not marker:
            return url
        query = urlencode(
            {"expires": expires, "sig": self._mac(self.key, unquote(resource), expires)}
        )
        return f"{url.split('?', 1)[0]}?{query}"

    def verify(
        self, resource: str, expires: str | None, sig: str | None, now: float | None = None
    ) -> None:
        """Raise BadSignature or Expired unless ``sig`` signs ``resource`` until ``expires``."""
        if not expires or not sig or not expires.isdigit() or len(sig) != 64:
            raise BadSignature("the URL is not signed: fetch it with a key, or use a signed URL")
        if not any(
            hmac.compare_digest(sig, self._mac(k, resource, int(expires))) for k in self.keys
        ):
            raise BadSignature("the URL's signature does not match its path")
        if int(expires) < (time.time() if now is None else now):
            raise Expired("the signed URL has expired: GET the job again for a fresh one")

    def sign_public(self, data: Any, now: float | None = None) -> Any:
        """A job's public JSON with every image URL in it signed (the job's retention caps
        the expiry when it has finished)."""
        expires = self.expiry(now, data.get("finished_at") if isinstance(data, dict) else None)
        return self._walk(data, expires)

    def _walk(self, value: Any, expires: int) -> Any:
        if isinstance(value, dict):
            return {
                k: self.sign(v, expires)
                if k in URI_FIELDS and isinstance(v, str)
                else self._walk(v, expires)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._walk(v, expires) for v in value]
        return value

    def sign_webhook_body(self, body: str, now: float | None = None) -> str:
        """A stored webhook body (``{"type", "timestamp", "data": job}``) with its URLs
        signed as of this send: a retry or replay days later carries URLs that work."""
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            return body
        payload["data"] = self.sign_public(payload["data"], now)
        return json.dumps(payload, separators=(",", ":"))


def url_signer(settings: Settings) -> UrlSigner:
    return UrlSigner(
        settings.auth.url_key.get_secret_value().encode(),
        [k.get_secret_value().encode() for k in settings.auth.url_previous_keys],
        ttl_s=settings.auth.url_ttl_s,
        retention_s=settings.storage.retention_days * 86400,
    )


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
