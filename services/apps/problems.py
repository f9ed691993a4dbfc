"""One error shape for every 4xx and 5xx of the gateway: RFC 9457 problem details
(``application/problem+json``), declared in the OpenAPI document.

``detail`` is always a sentence a client can show; a validation error adds ``errors``, one
entry per rejected field (where, what, why), as FastAPI's own 422 lists them.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

__all__ = ["Problem", "ProblemResponse", "problems", "install_problem_handlers"]

log = structlog.get_logger("lanes.gateway")
MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these status codes, plus any 4xx/5xx, as Problems."""
    body = {"model": Problem, "content": {MEDIA_TYPE: {}}}
    out: dict[int | str, dict[str, Any]] = {
        code: {**body, "description": HTTPStatus(code).phrase} for code in codes
    }
    out["4XX"] = {**body, "description": "A client error (RFC 9457 problem details)"}
    out["5XX"] = {**body, "description": "A server error (RFC 9457 problem details)"}
    return out


def _problem(
    request: Request, status: int, detail: str, headers: dict[str, str] | None = None, **more: Any
) -> ProblemResponse:
    body = Problem(
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        **more,
    )
    return ProblemResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers
    )


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def _allowed(app: FastAPI, request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first
    route's, and /v1/generations has two: GET and POST)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(app, request)
            detail = f"{request.method} is not served here; allowed: {headers['Allow']}"
            return _problem(request, 405, detail, headers)
        return _problem(request, exc.status_code, str(exc.detail), headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> ProblemResponse:
        errors = [
            FieldError(
                loc=list(e.get("loc", ())),
                msg=str(e.get("msg", "")),
                type=str(e.get("type", "")),
            )
            for e in jsonable_encoder(exc.errors())
        ]
        detail = "; ".join(f"{_where(tuple(e.loc))}: {e.msg}" for e in errors) or "invalid request"
        return _problem(request, 422, detail, errors=errors)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> ProblemResponse:
        return _problem(request, 422, str(exc))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> ProblemResponse:
        log.exception("request_failed", path=request.url.path)
        return _problem(request, 500, "internal error; the request may be retried")
