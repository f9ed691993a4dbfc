"""The console's forms without a browser: sign-in with an API key, CSRF, validation, what a
tenant's key sees against an admin key, and revocation ending a session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.auth.key_admin import revoke_key
from tests.support import Stack, csrf_of, running_stack, sign_in, wait_until, write_routes

pytestmark = [pytest.mark.kafka]


@pytest.fixture
async def stack(settings, tmp_path: Path) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    routes = write_routes(
        tmp_path / "routes.yaml", draft={"sample_steps": 1, "width": 64, "height": 64}
    )
    async with running_stack(settings, routes_file=routes, worker_lanes=[]) as s:
        yield s


async def test_forms_need_the_csrf_token_and_bad_input_publishes_nothing(stack: Stack) -> None:
    key = await stack.new_key("forms")
    async with httpx.AsyncClient(base_url=str(stack.http.base_url), follow_redirects=False) as web:
        assert (await web.get("/")).headers["location"].startswith("/login")  # sign in first
        assert (await sign_in(web, key)).status_code == 303
        page = await web.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        token = csrf_of(page.text)
        forged = await web.post("/console/submit", data={"prompt": "x"})  # no token
        assert forged.status_code == 403
        other = httpx.AsyncClient(base_url=str(stack.http.base_url))  # another visitor
        stolen = await other.post("/console/submit", data={"prompt": "x", "csrf": token})
        assert stolen.status_code in (303, 403)  # no session: to /login; never accepted
        await other.aclose()
        blank = await web.post("/console/submit", data={"prompt": "   ", "csrf": token})
        assert blank.status_code == 422 and "prompt" in blank.text
        foreign = await web.post(
            "/console/submit", data={"prompt": "a kite", "tenant": "other", "csrf": token}
        )
        assert foreign.status_code == 403 and "forms" in foreign.text
        before = (await stack.http.get("/v1/generations")).json()["items"]
        assert before == []  # nothing was published
        ok = await web.post("/console/submit", data={"prompt": "a kite", "csrf": token})
        assert ok.status_code == 303 and ok.headers["location"].startswith("/jobs/job_")
        job_id = ok.headers["location"].rsplit("/", 1)[-1]
        job = await stack.wait_for_status(job_id, {"routed"}, timeout=30)
        assert job["tenant"] == "forms"


async def test_admin_pages_need_an_admin_key_and_tenants_see_their_own(stack: Stack) -> None:
    tenant_key = await stack.new_key("acme")
    admin_key = await stack.new_key("ops", ["admin"])
    other = await stack.submit({"prompt": "someone else's", "tenant": "globex"})
    base = str(stack.http.base_url)
    async with httpx.AsyncClient(base_url=base, follow_redirects=False) as web:
        assert (await web.get("/rollouts")).headers["location"].startswith("/login")
        token = csrf_of((await web.get("/login")).text)
        refused = await web.post("/console/rollouts/draft", data={"action": "pause", "csrf": token})
        assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
        wrong = await web.post("/login", data={"key": "lanes_nope", "csrf": token})
        assert wrong.status_code == 401 and "lanes_nope" not in wrong.text
        signed = await sign_in(web, tenant_key, next_url="//evil")
        assert signed.status_code == 303 and signed.headers["location"] == "/"  # no open redirect
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert tenant_key not in cookie
        # A tenant's key: its own pages, not the ops pages, and not another tenant's job.
        assert (await web.get("/gallery")).status_code == 200
        for page in ("/rollouts", "/deliveries", "/lanes"):
            assert (await web.get(page)).headers["location"].startswith("/login"), page
        assert (await web.get(f"/jobs/{other}")).status_code == 404
        assert (await web.get(f"/console/jobs/{other}/events")).status_code == 404
        assert other not in (await web.get("/gallery?tenant=globex")).text
    async with httpx.AsyncClient(base_url=base, follow_redirects=False) as web:
        await sign_in(web, admin_key)
        for page in ("/rollouts", "/deliveries", "/lanes"):
            assert (await web.get(page)).status_code == 200, page
        assert (await web.get(f"/jobs/{other}")).status_code == 200
        # Revoking the key ends its session on the next request (no server-side store).
        await revoke_key(stack.settings, admin_key.split("_")[1])

        async def signed_out() -> bool:
            return (await web.get("/rollouts")).status_code == 303

        await wait_until(signed_out, timeout=5, what="the revoked key's session refused")
