"""Console pages and their form actions (see the package doc).

Pages: ``/`` submit, ``/jobs/{id}`` a job, ``/gallery``, ``/lanes`` (live), ``/rollouts``
(admin), ``/deliveries`` (admin), ``/login``. Every form POST carries the CSRF token; the
admin pages and actions need the admin session (see ``session``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from schemas.control import OpsCommand
from schemas.records import JobState
from schemas.spec import GenerationSpec
from services.apps.console.lanes_data import WINDOW_S, lane_rows
from services.apps.console.session import Sessions
from services.apps.ops_client import send_and_wait
from services.apps.webhook_replay import replay
from services.config.settings import Settings
from services.domain.job_index import BadCursor, JobFilter

__all__ = ["ConsoleDeps", "install_console"]

STATUSES = ["queued", "deferred", "running", "verifying", "succeeded", "failed", "canceled"]
ACTIONS = ("deploy", "canary", "promote", "rollback", "pause", "resume", "restart")


@dataclass
class ConsoleDeps:
    state: Any  # the gateway's GatewayState (job view, rollout view, lags, deliveries)
    settings: Settings
    accept: Callable[[GenerationSpec, str | None], Awaitable[tuple[str, bool]]]
    cancel: Callable[[str], Awaitable[JobState | None]]
    public: Callable[[JobState], dict[str, Any]]


def install_console(app: FastAPI, deps: ConsoleDeps) -> None:
    settings, state = deps.settings, deps.state
    package = resources.files("services.apps.console")
    templates = Jinja2Templates(directory=str(package / "templates"))  # autoescape on
    app.mount("/console/static", StaticFiles(directory=str(package / "static")), name="static")
    sessions = Sessions(settings)

    def page(request: Request, name: str, status_code: int = 200, **ctx: Any) -> Response:
        token = sessions.csrf(request)
        response = templates.TemplateResponse(
            request,
            name,
            {"csrf": token, "admin": sessions.is_admin(request), "open": sessions.open, **ctx},
            status_code=status_code,
        )
        return sessions.keep(request, response, token)

    def back(url: str, **params: str) -> RedirectResponse:
        query = f"?{urlencode(params)}" if params else ""
        return RedirectResponse(url + query, status_code=303)

    def need_admin(request: Request) -> None:
        if not sessions.is_admin(request):
            raise HTTPException(401, "sign in with the admin token first (/login)")

    # ---- submit and job pages ----------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def submit_page(request: Request) -> Response:
        return page(request, "submit.html", form={}, error=None)

    @app.post("/console/submit", include_in_schema=False)
    async def submit(request: Request) -> Response:
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
            spec = GenerationSpec.model_validate(body)
            job_id, _ = await deps.accept(spec, None)
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

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    async def job_page(request: Request, job_id: str) -> Response:
        job = state.job(job_id)
        if job is None and job_id not in state.accepted:
            return page(request, "missing.html", status_code=404, job_id=job_id)
        body = deps.public(job) if job is not None else {"job_id": job_id, "status": "queued"}
        return page(
            request,
            "job.html",
            job=job,
            body=body,
            job_id=job_id,
            flash=request.query_params.get("flash"),
        )

    @app.post("/console/jobs/{job_id}/cancel", include_in_schema=False)
    async def cancel_job(request: Request, job_id: str, csrf: str = Form("")) -> Response:
        sessions.verify_csrf(request, csrf)
        try:
            await deps.cancel(job_id)
        except HTTPException as exc:
            return back(f"/jobs/{job_id}", flash=str(exc.detail))
        return back(f"/jobs/{job_id}", flash="cancel requested")

    @app.post("/console/jobs/{job_id}/retry", include_in_schema=False)
    async def retry_job(request: Request, job_id: str, csrf: str = Form("")) -> Response:
        sessions.verify_csrf(request, csrf)
        job = state.job(job_id)
        if job is None or job.spec is None:
            return back(f"/jobs/{job_id}", flash="this job's request is not known yet")
        try:
            new_id, _ = await deps.accept(job.spec, None)
        except HTTPException as exc:
            return back(f"/jobs/{job_id}", flash=str(exc.detail))
        return back(f"/jobs/{new_id}")

    # ---- gallery ------------------------------------------------------------------------

    @app.get("/gallery", response_class=HTMLResponse, include_in_schema=False)
    async def gallery(
        request: Request,
        status: str | None = None,
        lane: str | None = None,
        intent: str | None = None,
        tenant: str | None = None,
        flagged: bool = False,
        cursor: str | None = None,
    ) -> Response:
        flt = JobFilter(
            status=status or None, lane=lane or None, intent=intent or None, tenant=tenant or None
        )
        jobs: list[JobState] = []
        next_cursor = cursor
        try:
            for _ in range(10):  # flagged is not indexed: scan up to 10 pages for a page of them
                found, next_cursor = state.jobs.page(flt, 24, next_cursor)
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
            jobs=[deps.public(j) for j in jobs],
            filters=filters,
            statuses=STATUSES,
            lanes=sorted(state.routes.lanes),
            next_query=urlencode({**{k: v for k, v in filters.items() if v}, "cursor": next_cursor})
            if next_cursor
            else None,
        )

    # ---- lanes (live) -------------------------------------------------------------------

    def lane_data() -> Any:
        lags = state.lags.lags if state.lags.measured.is_set() else None
        spill = (
            {lane: state.lags.spill_lag(lane) for lane in state.routes.spill_lanes}
            if lags is not None
            else None
        )
        return lane_rows(sorted(state.routes.lanes), state.rollout.lanes(), state.jobs, lags, spill)

    @app.get("/lanes", response_class=HTMLResponse, include_in_schema=False)
    async def lanes_page(request: Request) -> Response:
        return page(request, "lanes.html", rows=lane_data(), window_min=WINDOW_S // 60)

    @app.get("/console/fragments/lanes", response_class=HTMLResponse, include_in_schema=False)
    async def lanes_fragment(request: Request) -> Response:
        return page(request, "_lanes.html", rows=lane_data(), window_min=WINDOW_S // 60)

    # ---- rollouts (admin) ---------------------------------------------------------------

    @app.get("/rollouts", response_class=HTMLResponse, include_in_schema=False)
    async def rollouts_page(request: Request) -> Response:
        if not sessions.is_admin(request):
            return back("/login", next="/rollouts")
        return page(
            request,
            "rollouts.html",
            lanes=state.rollout.lanes(),
            history=state.ops_history,
            models=sorted(state.routes.models),
            actions=ACTIONS,
            flash=request.query_params.get("flash"),
        )

    @app.post("/console/rollouts/{lane}", include_in_schema=False)
    async def rollout_action(request: Request, lane: str) -> Response:
        need_admin(request)
        form = dict(await request.form())
        sessions.verify_csrf(request, str(form.get("csrf", "")))
        action = str(form.get("action", ""))
        if action not in ACTIONS:
            return back("/rollouts", flash=f"unknown action {action!r}")
        fields: dict[str, Any] = {"action": action, "lane": lane, "issuer": "console"}
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

    @app.get("/deliveries", response_class=HTMLResponse, include_in_schema=False)
    async def deliveries_page(request: Request, job: str | None = None) -> Response:
        if not sessions.is_admin(request):
            return back("/login", next="/deliveries")
        return page(
            request,
            "deliveries.html",
            deliveries=state.recent_deliveries(job or None),
            dead=state.dead_letters(),
            job=job or "",
            flash=request.query_params.get("flash"),
        )

    @app.post("/console/deliveries/replay", include_in_schema=False)
    async def replay_delivery(
        request: Request, key: str = Form(...), csrf: str = Form("")
    ) -> Response:
        need_admin(request)
        sessions.verify_csrf(request, csrf)
        sent = await replay(settings, {key})
        return back("/deliveries", flash=f"replayed {', '.join(sent) or 'nothing'}")

    # ---- sign in ------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_page(request: Request, next: str = "/rollouts") -> Response:
        return page(request, "login.html", next=_local(next), error=None)

    @app.post("/login", include_in_schema=False)
    async def login(
        request: Request, token: str = Form(""), csrf: str = Form(""), next: str = Form("/rollouts")
    ) -> Response:
        sessions.verify_csrf(request, csrf)
        if sessions.open or not sessions.check_token(token):
            return page(
                request, "login.html", status_code=401, next=_local(next), error="wrong token"
            )
        response = back(_local(next))
        sessions.sign_in(response)
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request, csrf: str = Form("")) -> Response:
        sessions.verify_csrf(request, csrf)
        response = back("/")
        sessions.sign_out(response)
        return response


def _local(url: str) -> str:
    """Only a path on this site (no open redirect)."""
    return url if url.startswith("/") and not url.startswith("//") else "/"
