"""The console's forms without a browser: CSRF, validation, admin sign-in, production."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.apps.gateway import create_app
from services.config.settings import Settings
from tests.support import Stack, running_stack, write_routes

pytestmark = [pytest.mark.kafka]

TOKEN = "forms-admin-token"


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    routes = write_routes(
        tmp_path / "routes.yaml", draft={"sample_steps": 1, "width": 64, "height": 64}
    )
    async with running_stack(
        settings, routes_file=routes, admin_token=SecretStr(TOKEN), worker_lanes=[]
    ) as s:
        yield s


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


async def test_forms_need_the_csrf_token_and_bad_input_publishes_nothing(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=str(stack.http.base_url), follow_redirects=False) as web:
        page = await web.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        token = csrf_of(page.text)
        forged = await web.post("/console/submit", data={"prompt": "x"})  # no token
        assert forged.status_code == 403
        other = httpx.AsyncClient(base_url=str(stack.http.base_url))  # another visitor
        stolen = await other.post("/console/submit", data={"prompt": "x", "csrf": token})
        assert stolen.status_code == 403  # the token is only good with its own cookie
        await other.aclose()
        blank = await web.post("/console/submit", data={"prompt": "   ", "csrf": token})
        assert blank.status_code == 422 and "prompt" in blank.text
        before = (await stack.http.get("/v1/generations")).json()["items"]
        assert before == []  # nothing was published
        ok = await web.post("/console/submit", data={"prompt": "a kite", "csrf": token})
        assert ok.status_code == 303 and ok.headers["location"].startswith("/jobs/job_")


async def test_admin_pages_and_actions_need_the_admin_sign_in(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=str(stack.http.base_url), follow_redirects=False) as web:
        assert (await web.get("/rollouts")).headers["location"].startswith("/login")
        assert (await web.get("/deliveries")).headers["location"].startswith("/login")
        token = csrf_of((await web.get("/login")).text)
        refused = await web.post("/console/rollouts/draft", data={"action": "pause", "csrf": token})
        assert refused.status_code == 401
        wrong = await web.post("/login", data={"token": "nope", "csrf": token})
        assert wrong.status_code == 401
        signed = await web.post("/login", data={"token": TOKEN, "csrf": token, "next": "//evil"})
        assert signed.status_code == 303 and signed.headers["location"] == "/"  # no open redirect
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert (await web.get("/rollouts")).status_code == 200


def test_production_refuses_the_console_without_an_admin_token(settings: Settings) -> None:
    prod = settings.model_copy(
        update={
            "profile": "production",
            "webhook_secret": SecretStr("whsec_cHJvZHVjdGlvbi1zZWNyZXQtMDEyMzQ1Njc4OQ=="),
            "ops_key": SecretStr("whsec_b3BzLWtleS1mb3ItcHJvZHVjdGlvbi0wMTIzNDU="),
            "artifacts": "s3://bucket/lanes",
        }
    )
    with pytest.raises(SystemExit, match="LANES_ADMIN_TOKEN"):
        create_app(prod)
    create_app(prod.model_copy(update={"console_enabled": False}))  # the API alone runs
