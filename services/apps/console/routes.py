"""Console pages and their form actions (see the package doc).

Everyone signs in with an API key (``/login``). A tenant's key sees that tenant's submit
form, jobs and gallery; an admin key adds ``/lanes`` (live), ``/rollouts`` and
``/deliveries`` and their actions. Every form POST carries the CSRF token. The pages reach
the gateway's objects through the same dependencies as the API's routers.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from schemas.control import OpsCommand
from schemas.spec import GenerationSpec
from services.apps.console.lanes_data import WINDOW_S, lane_rows
from services.apps.console.session import Sessions
from services.apps.gateway.auth import Authenticator
from services.apps.gateway.deps import (
    Publisher,
    Signer,
    client_address,
    get_auth,
    get_jobs,
    need,
    present,
    visible_job,
)
from services.apps.gateway.events import generation_events
from services.apps.gateway.generations import cancel_job, spec_for
from services.apps.gateway.views import GatewayViews
from services.apps.ops_client import send_and_wait
from services.apps.webhook_replay import replay
from services.auth.api_keys import Identity, InvalidKey
from services.config.settings import Settings
from services.domain.job_index import BadCursor, JobFilter

__all__ = ["console_router"]

STATUSES = ["queued", "deferred", "running", "verifying", "succeeded", "failed", "canceled"]
ACTIONS = ("deploy", "canary", "promote", "rollback", "pause", "resume", "restart")

Views = Annotated[GatewayViews, Depends(get_jobs)]


class SignIn(Exception):
    """Raised by a page that needs a (more privileged) session: redirect to /login."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def signed_in(request: Request) -> Identity:
    """Dependency: the signed-in key (with read scope), else a redirect to /login."""
    caller = request.app.state.sessions.identity(request)
    if caller is None or not caller.can("generations:read"):
        raise SignIn(request.url.path)
    return caller  # type: ignore[no-any-return]


def signed_in_admin(request: Request) -> Identity:
    """Dependency: a signed-in admin key, else a redirect to /login."""
    caller = request.app.state.sessions.identity(request)
    if caller is None or not caller.admin:
        raise SignIn(request.url.path)
    return caller  # type: ignore[no-any-return]


Caller = Annotated[Identity, Depends(signed_in)]
AdminCaller = Annotated[Identity, Depends(signed_in_admin)]


def console_router(app: FastAPI, settings: Settings) -> None:
    package = resources.files("services.apps.console")
    templates = Jinja2Templates(directory=str(package / "templates"))  # autoescape on
    app.mount("/console/static", StaticFiles(directory=str(package / "static")), name="static")
    sessions = Sessions(settings, app.state.auth.keys)
    app.state.sessions = sessions
    base_url = settings.public_base_url
    router = APIRouter(include_in_schema=False)

    @app.exception_handler(SignIn)
    async def to_login(request: Request, exc: SignIn) -> Response:
        return back("/login", next=exc.next_url)

    def who(request: Request) -> Identity | None:
        return sessions.identity(request)

    def page(request: Request, name: str, status_code: int = 200, **ctx: Any) -> Response:
        token = sessions.csrf(request)
        response = templates.TemplateResponse(
            request,
            name,
            {"csrf": token, "caller": who(request), **ctx},
            status_code=status_code,
        )
        return sessions.keep(request, response, token)

    def back(url: str, **params: str) -> RedirectResponse:
        query = f"?{urlencode(params)}" if params else ""
        return RedirectResponse(url + query, status_code=303)

    # ---- submit and job pages ----------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    async def submit_page(request: Request, caller: Caller) -> Response:
        return page(request, "submit.html", form={}, error=None)

    @router.post("/console/submit")
    async def submit(request: Request, caller: Caller, publisher: Publisher) -> Response:
        form = dict(await request.form())
        sessions.verify_csrf(request, str(form.pop("csrf", "")))
        body: dict[str, Any] = {k: v for k, v in form.items() if str(v).strip() != ""}
        for name in ("seed", "width", "height"):
            if name in body:
                try:
                    body[name] = int(str(body[name]))
                except ValueError:
                    pass  # the spec's validation says why
        try:
            spec = spec_for(GenerationSpec.model_validate(body), need(caller, "generations:write"))
            job_id, _ = await publisher.accept(spec, None)
        except ValidationError as exc:
            error = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            return page(request, "submit.html", status_code=422, form=form, error=error)
        except HTTPException as exc:
            return page(
                request, "submit.html", status_code=exc.status_code, form=form, error=exc.detail
            )
        return back(f"/jobs/{job_id}")

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(
        request: Request, job_id: str, caller: Caller, views: Views, signer: Signer
    ) -> Response:
        try:
            job = visible_job(views, job_id, caller)
        except HTTPException:
            return page(request, "missing.html", status_code=404, job_id=job_id)
        body = (
            present(job, caller, views, signer, base_url)
            if job is not None
            else {"job_id": job_id, "status": "queued"}
        )
        return page(
            request,
            "job.html",
            job=job,
            body=body,
            job_id=job_id,
            # A link to the job's trace where a trace UI is configured (LANES_TRACE_UI_URL).
            trace_url=(
                settings.process.trace_ui_url.replace("{trace_id}", job.trace_id)
                if settings.process.trace_ui_url and job is not None and job.trace_id
                else None
            ),
            flash=request.query_params.get("flash"),
        )

    @router.get("/console/jobs/{job_id}/events")
    async def job_events_stream(
        request: Request,
        job_id: str,
        caller: Caller,
        views: Views,
        signer: Signer,
        last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    ) -> StreamingResponse:
        """The API's event stream, for the signed-in session (EventSource sends no header)."""
        return await generation_events(
            job_id, request, caller, views, signer, settings, last_event_id
        )

    @router.post("/console/jobs/{job_id}/cancel")
    async def cancel_from_page(
        request: Request,
        job_id: str,
        caller: Caller,
        views: Views,
        publisher: Publisher,
        csrf: str = Form(""),
    ) -> Response:
        sessions.verify_csrf(request, csrf)
        try:
            await cancel_job(views, publisher, job_id, need(caller, "generations:write"))
        except HTTPException as exc:
            return back(f"/jobs/{job_id}", flash=str(exc.detail))
        return back(f"/jobs/{job_id}", flash="cancel requested")

    @router.post("/console/jobs/{job_id}/retry")
    async def retry_from_page(
        request: Request,
        job_id: str,
        caller: Caller,
        views: Views,
        publisher: Publisher,
        csrf: str = Form(""),
    ) -> Response:
        sessions.verify_csrf(request, csrf)
        try:
            job = visible_job(views, job_id, need(caller, "generations:write"))
            if job is None or job.spec is None:
                return back(f"/jobs/{job_id}", flash="this job's request is not known yet")
            new_id, _ = await publisher.accept(job.spec, None)
        except HTTPException as exc:
            return back(f"/jobs/{job_id}", flash=str(exc.detail))
        return back(f"/jobs/{new_id}")

    # ---- gallery ------------------------------------------------------------------------

    @router.get("/gallery", response_class=HTMLResponse)
    async def gallery(
        request: Request,
        caller: Caller,
        views: Views,
        signer: Signer,
        status: str | None = None,
        lane: str | None = None,
        intent: str | None = None,
        tenant: str | None = None,
        flagged: bool = False,
        cursor: str | None = None,
    ) -> Response:
        if not caller.admin:
            tenant = caller.tenant  # a tenant's gallery is its own
        flt = JobFilter(
            status=status or None, lane=lane or None, intent=intent or None, tenant=tenant or None
        )
        jobs = []
        next_cursor = cursor
        try:
            for _ in range(10):  # flagged is not indexed: scan up to 10 pages for a page of them
                found, next_cursor = views.page(flt, 24, next_cursor)
                jobs += [j for j in found if j.flagged] if flagged else found
                if len(jobs) >= 24 or next_cursor is None or not flagged:
                    break
        except BadCursor as exc:
            raise HTTPException(422, str(exc)) from exc
        filters = {
            "status": status or "",
            "lane": lane or "",
            "intent": intent or "",
            "tenant": tenant or "",
        }
        if flagged:
            filters["flagged"] = "true"
        return page(
            request,
            "gallery.html",
            jobs=[present(j, caller, views, signer, base_url) for j in jobs],
            filters=filters,
            statuses=STATUSES,
            lanes=sorted(views.routes.lanes),
            next_query=urlencode({**{k: v for k, v in filters.items() if v}, "cursor": next_cursor})
            if next_cursor
            else None,
        )

    # ---- lanes (live, admin) ------------------------------------------------------------

    def lane_data(views: GatewayViews) -> Any:
        lags = views.lags.lags if views.lags.measured.is_set() else None
        spill = (
            {lane: views.lags.spill_lag(lane) for lane in views.routes.spill_lanes}
            if lags is not None
            else None
        )
        return lane_rows(sorted(views.routes.lanes), views.rollout.lanes(), views.jobs, lags, spill)

    @router.get("/lanes", response_class=HTMLResponse)
    async def lanes_page(request: Request, caller: AdminCaller, views: Views) -> Response:
        return page(request, "lanes.html", rows=lane_data(views), window_min=WINDOW_S // 60)

    @router.get("/console/fragments/lanes", response_class=HTMLResponse)
    async def lanes_fragment(request: Request, caller: AdminCaller, views: Views) -> Response:
        return page(request, "_lanes.html", rows=lane_data(views), window_min=WINDOW_S // 60)

    # ---- rollouts (admin) ---------------------------------------------------------------

    @router.get("/rollouts", response_class=HTMLResponse)
    async def rollouts_page(request: Request, caller: AdminCaller, views: Views) -> Response:
        return page(
            request,
            "rollouts.html",
            lanes=views.rollout.lanes(),
            history=views.ops_history,
            models=sorted(views.routes.models),
            actions=ACTIONS,
            flash=request.query_params.get("flash"),
        )

    @router.post("/console/rollouts/{lane}")
    async def rollout_action(request: Request, lane: str, caller: AdminCaller) -> Response:
        form = dict(await request.form())
        sessions.verify_csrf(request, str(form.get("csrf", "")))
        action = str(form.get("action", ""))
        if action not in ACTIONS:
            return back("/rollouts", flash=f"unknown action {action!r}")
        # The signed command names the key that signed in: the revision history says who.
        fields: dict[str, Any] = {"action": action, "lane": lane, "issuer": f"key:{caller.key_id}"}
        for name in ("model", "version", "reason"):
            if str(form.get(name, "")).strip():
                fields[name] = str(form[name]).strip()
        if str(form.get("percent", "")).strip():
            fields["percent"] = str(form["percent"]).strip()
        try:
            cmd = OpsCommand.model_validate(fields)
            result = await send_and_wait(settings, cmd)
        except ValidationError as exc:
            return back("/rollouts", flash=f"{action} {lane}: {exc.errors()[0]['msg']}")
        except TimeoutError:
            return back("/rollouts", flash=f"{action} {lane}: no answer from the control plane")
        if result.outcome == "applied":
            return back("/rollouts", flash=f"{action} {lane}: applied (revision {result.revision})")
        return back("/rollouts", flash=f"{action} {lane}: rejected: {result.reason}")

    # ---- deliveries (admin) -------------------------------------------------------------

    @router.get("/deliveries", response_class=HTMLResponse)
    async def deliveries_page(
        request: Request, caller: AdminCaller, views: Views, job: str | None = None
    ) -> Response:
        return page(
            request,
            "deliveries.html",
            deliveries=views.recent_deliveries(job or None),
            dead=views.dead_letters(),
            job=job or "",
            flash=request.query_params.get("flash"),
        )

    @router.post("/console/deliveries/replay")
    async def replay_delivery(
        request: Request, caller: AdminCaller, key: str = Form(...), csrf: str = Form("")
    ) -> Response:
        sessions.verify_csrf(request, csrf)
        sent = await replay(settings, {key})
        return back("/deliveries", flash=f"replayed {', '.join(sent) or 'nothing'}")

    # ---- sign in ------------------------------------------------------------------------

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> Response:
        return page(request, "login.html", next=_local(next), error=None)

    @router.post("/login")
    async def login(
        request: Request,
        auth: Annotated[Authenticator, Depends(get_auth)],
        key: str = Form(""),
        csrf: str = Form(""),
        next: str = Form("/"),
    ) -> Response:
        sessions.verify_csrf(request, csrf)
        client = client_address(request)
        auth.check_throttle(client)
        try:
            identity = await auth.keys.identify_fresh(key.strip())
        except InvalidKey:
            auth.refuse(client)
            return page(
                request, "login.html", status_code=401, next=_local(next), error=str(InvalidKey())
            )
        response = back(_local(next))
        sessions.sign_in(response, identity)
        return response

    @router.post("/logout")
    async def logout(request: Request, csrf: str = Form("")) -> Response:
        sessions.verify_csrf(request, csrf)
        response = back("/login")
        sessions.sign_out(response)
        return response

    app.include_router(router)


def _local(url: str) -> str:
    """Only a path on this site (no open redirect)."""
    return url if url.startswith("/") and not url.startswith("//") else "/"
