"""OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``), which the SDKs
parse into ``openai.BadRequestError`` and the like, on the OpenAI-compatible routes only;
Lanes' own routes keep RFC 9457 problems."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

__all__ = ["OpenAIError", "OpenAIErrorRoute", "ERRORS", "invalid", "bad_param"]


class OpenAIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.headers = kind, headers or {}

    @property
    def body(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body}, status_code=self.status, headers=self.headers)


def bad_param(param: str, message: str) -> OpenAIError:
    """A 400 naming the field."""
    return OpenAIError(400, message, param=param, code="invalid_value")


_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


class OpenAIErrorRoute(APIRoute):
    """This router's errors in OpenAI's shape: bad bodies (400, ``param`` naming the field),
    and the gateway's own refusals (401, 403, 429, 503) with their status and headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return exc.response()
            except RequestValidationError as exc:
                return invalid(exc.errors()).response()
            except HTTPException as exc:
                kind = _KINDS.get(exc.status_code, "invalid_request_error")
                if exc.status_code == 429:
                    kind = "rate_limit_error"
                elif exc.status_code >= 500:
                    kind = "server_error"
                return OpenAIError(
                    exc.status_code, str(exc.detail), kind=kind, headers=dict(exc.headers or {})
                ).response()

        return handle


def invalid(errors: Any) -> OpenAIError:
    """A pydantic validation failure as a 400 naming its first field."""
    first = list(errors)[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = loc[0] if loc else None
    message = first.get("msg", "invalid request")
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return OpenAIError(400, f"{param}: {message}" if param else message, param=param, code=code)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape (what the SDKs parse), on these routes only."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in {
        400: "A field the lanes cannot serve (``param`` names it)",
        401: "No valid API key",
        403: "The key lacks generations:write",
        404: "An unknown model (``model_not_found``)",
        429: "Over the tenant's quota, or too many failed keys",
        500: "A job did not succeed (named, with its reason)",
        503: "The broker or the image store did not answer; retry",
        504: "Not ready within gateway.openai_wait_s; the jobs go on (named)",
    }.items()
}
