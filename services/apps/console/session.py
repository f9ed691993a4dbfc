"""Console sign-in and CSRF: a session cookie naming the API key that signed in, and a
double-submit CSRF token on every form.

- ``lanes_session``: ``<key id>.<expiry>.<HMAC-SHA256(session key, "<key id>.<expiry>")>``;
  HttpOnly, SameSite=Strict, Secure when the console is served over https. The session key
  is derived from ``LANES_ARTIFACT_URL_KEY`` (its own purpose string), so any replica
  verifies a cookie with no server-side store; each request also looks the key up in the
  key ring, so revoking the key ends its sessions on every replica.
- ``lanes_csrf``: a random token set on the first page; every POST must carry it back in
  the form field ``csrf`` (and, SameSite=Strict, no other site can send the cookie anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from fastapi import HTTPException, Request, Response

from services.auth.api_keys import Identity
from services.auth.key_ring import KeyRing
from services.config.settings import Settings

__all__ = ["Sessions", "SESSION", "CSRF"]

SESSION = "lanes_session"
CSRF = "lanes_csrf"
SESSION_S = 8 * 3600


class Sessions:
    def __init__(self, settings: Settings, keys: KeyRing) -> None:
        self.keys = keys
        self.key = hashlib.sha256(
            b"lanes-console-session:" + settings.auth.url_key.get_secret_value().encode()
        ).digest()
        self.secure = settings.public_base_url.startswith("https://")

    def _sign(self, key_id: str, expiry: int) -> str:
        return hmac.new(self.key, f"{key_id}.{expiry}".encode(), hashlib.sha256).hexdigest()

    def sign_in(self, response: Response, identity: Identity) -> None:
        expiry = int(time.time()) + SESSION_S
        response.set_cookie(
            SESSION,
            f"{identity.key_id}.{expiry}.{self._sign(identity.key_id, expiry)}",
            max_age=SESSION_S,
            httponly=True,
            samesite="strict",
            secure=self.secure,
        )

    def sign_out(self, response: Response) -> None:
        response.delete_cookie(SESSION)

    def identity(self, request: Request) -> Identity | None:
        """Who is signed in: the session's key, if the cookie is genuine and unexpired and
        the key is still live."""
        key_id, _, rest = request.cookies.get(SESSION, "").partition(".")
        expiry, _, mac = rest.partition(".")
        if not key_id or not expiry.isdigit() or int(expiry) < time.time():
            return None
        if not hmac.compare_digest(mac, self._sign(key_id, int(expiry))):
            return None
        return self.keys.still_valid(key_id)

    def csrf(self, request: Request) -> str:
        """The visitor's CSRF token (a new one when there is none: ``keep`` sets it)."""
        return request.cookies.get(CSRF) or secrets.token_urlsafe(24)

    def keep(self, request: Request, response: Response, token: str) -> Response:
        if request.cookies.get(CSRF) != token:
            response.set_cookie(CSRF, token, httponly=True, samesite="strict", secure=self.secure)
        return response

    def verify_csrf(self, request: Request, form_token: str | None) -> None:
        cookie = request.cookies.get(CSRF)
        if not cookie or not form_token or not secrets.compare_digest(cookie, form_token):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page")
