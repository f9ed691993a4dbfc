"""Console sign-in and CSRF: an admin session cookie signed with a key derived from the
admin token, and a double-submit CSRF token on every form.

- ``lanes_session``: ``<expiry>.<HMAC-SHA256(key, "admin.<expiry>")>``; HttpOnly,
  SameSite=Strict, Secure when the console is served over https. No server-side store:
  any gateway replica verifies it; rotating the admin token signs everyone out.
- ``lanes_csrf``: a random token set on the first page; every POST must carry it back in
  the form field ``csrf`` (and, SameSite=Strict, no other site can send the cookie anyway).
- Without an admin token (the local profile), the console is open: the production profile
  refuses to start the console without one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from fastapi import HTTPException, Request, Response

from services.config.settings import Settings

__all__ = ["Sessions", "SESSION", "CSRF"]

SESSION = "lanes_session"
CSRF = "lanes_csrf"
SESSION_S = 8 * 3600


class Sessions:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        token = settings.admin_token
        self.key = (
            hashlib.sha256(b"lanes-console-session:" + token.get_secret_value().encode()).digest()
            if token is not None
            else None
        )
        self.secure = settings.public_base_url.startswith("https://")

    @property
    def open(self) -> bool:
        """No admin token: every visitor is an admin (local use only)."""
        return self.key is None

    def _sign(self, expiry: int) -> str:
        assert self.key is not None
        return hmac.new(self.key, f"admin.{expiry}".encode(), hashlib.sha256).hexdigest()

    def check_token(self, given: str) -> bool:
        token = self.settings.admin_token
        return token is not None and secrets.compare_digest(
            given.encode(), token.get_secret_value().encode()
        )

    def sign_in(self, response: Response) -> None:
        expiry = int(time.time()) + SESSION_S
        response.set_cookie(
            SESSION,
            f"{expiry}.{self._sign(expiry)}",
            max_age=SESSION_S,
            httponly=True,
            samesite="strict",
            secure=self.secure,
        )

    def sign_out(self, response: Response) -> None:
        response.delete_cookie(SESSION)

    def is_admin(self, request: Request) -> bool:
        if self.open:
            return True
        expiry, _, mac = request.cookies.get(SESSION, "").partition(".")
        if not expiry.isdigit() or int(expiry) < time.time():
            return False
        return hmac.compare_digest(mac, self._sign(int(expiry)))

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
