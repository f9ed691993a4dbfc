"""HTTP gateway (FastAPI): accept generation requests, serve job status and images.

Status comes from the compacted ``lanes.jobs`` topic, materialized into this gateway's
own SQLite file (``services.domain.job_index``): a restart resumes from the stored offsets,
and memory holds the page cache, not the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any, Literal

import structlog
from cachetools import TTLCache
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram

from producers.client import GenerationClient, fingerprint, job_id_for
from schemas.control import LaneDesired
from schemas.events import utcnow
from schemas.records import JobState, JobStatus, WebhookDelivery, WebhookMessage, artifact_name
from schemas.spec import GenerationSpec
from schemas.topics import Topics
from services.apps.console import ConsoleDeps, install_console
from services.apps.console.history import RevisionHistory
from services.apps.job_events import job_events
from services.apps.problems import install_problem_handlers, problems
from services.config.routes import load_routes
from services.config.settings import Settings
from services.domain.admission import TokenBuckets
from services.domain.fleet_share import GatewayFleet
from services.domain.job_index import BadCursor, JobFilter, JobIndex, micros
from services.domain.rollout import LaneRollout, RolloutView
from services.kafka.lag_monitor import LagMonitor
from services.kafka.sqlite_view import SqliteView
from services.process.ops_server import ops_routes
from services.storage.artifacts import ArtifactError, ArtifactUnavailable, open_store
from services.webhooks.delivery import RefusedTarget, Unresolvable, resolve_target

__all__ = ["create_app"]

log = structlog.get_logger("lanes.gateway")


class GatewayState:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.client: GenerationClient | None = None  # made in start(): needs a running loop
        self.jobs = JobIndex(
            settings, Topics(settings.topic_prefix).jobs, settings.view_path("gateway-jobs")
        )
        self.routes = load_routes(settings.routes_file)
        self.rollout = RolloutView(settings, self.routes)
        topics = Topics(settings.topic_prefix)
        # For the console: lanes' lag, revision history, webhook deliveries and dead letters.
        self.lags = LagMonitor(
            settings, sorted(self.routes.lanes), every_s=2.0, spill=self.routes.spill_lanes
        )
        self.history = RevisionHistory(settings)
        self.deliveries = SqliteView(
            settings,
            topics.webhook_deliveries,
            settings.view_path("gateway-deliveries"),
            columns=("job",),
            indexes=(("job",),),
            extract=lambda value: {"job": json.loads(value)["job_id"]},
        )
        # On disk too: a receiver down for weeks must not grow this process's memory.
        self.dead_webhooks = SqliteView(
            settings, topics.webhooks_dlq, settings.view_path("gateway-webhooks-dlq")
        )
        self.fleet: GatewayFleet | None = None  # made in start(), on the client's producer
        self.quotas = TokenBuckets(
            settings.tenant_quotas,
            settings.default_quota,
            share=lambda: self.fleet.share() if self.fleet is not None else 1.0,
        )
        self._followers: list[asyncio.Task[None]] = []
        self.store = open_store(settings)
        # Jobs this gateway accepted that lanes.jobs may not show yet: id -> fingerprint.
        # Bounded: the jobs consumer folds a request within seconds.
        self.accepted: TTLCache[str, str] = TTLCache(maxsize=50_000, ttl=600)
        self.started = False
        self.requests = Counter(
            "lanes_gateway_requests_total", "Generation requests", ["outcome"], registry=registry
        )
        self.publish_seconds = Histogram(
            "lanes_gateway_publish_seconds",
            "Time until the broker acknowledged a request",
            registry=registry,
        )

    async def start(self) -> None:
        # An unusable artifact store fails start-up with the reason (readiness never true).
        await asyncio.to_thread(self.store.check)
        self.client = GenerationClient(self.settings, producer_name="lanes-gateway")
        await self.client.start()
        self.fleet = GatewayFleet(self.settings, self.client.producer)
        self._followers = [
            asyncio.create_task(self.fleet.run(), name="gateway-fleet"),
            asyncio.create_task(self.jobs.view.follow(), name="jobs-view"),
            asyncio.create_task(self.rollout.follow(), name="rollout-view"),
            asyncio.create_task(self.lags.run(), name="lane-lags"),
            asyncio.create_task(self.history.follow(), name="revision-history"),
            asyncio.create_task(self.deliveries.follow(), name="deliveries-view"),
            asyncio.create_task(self.dead_webhooks.follow(), name="webhooks-dlq"),
            asyncio.create_task(self._forget_expired(), name="retention"),
        ]
        self.started = True

    async def stop(self) -> None:
        self.started = False
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        if self.client is not None:
            await self.client.stop()
        await self.lags.close()
        self.jobs.view.close()
        self.deliveries.close()
        self.dead_webhooks.close()

    async def _forget_expired(self) -> None:
        """Drop rows a day past retention whose tombstone this view never read (it was
        compacted away while this gateway was down); the jobs consumer deletes the rest."""
        while True:
            cutoff = utcnow() - timedelta(days=self.settings.retention_days + 1)
            self.jobs.view.delete_where("finished < ?", [micros(cutoff)])
            await asyncio.sleep(self.settings.retention_sweep_s)

    def ready(self) -> bool:
        """Started, the jobs view caught up, and no follower has died (a dead view would
        serve stale status: better out of the load balancer, with the reason logged)."""
        dead = [t for t in self._followers if t.done() and not t.cancelled()]
        for task in dead:
            log.error("gateway_follower_died", task=task.get_name(), error=repr(task.exception()))
        return self.started and self.jobs.view.caught_up.is_set() and not dead

    @property
    def ops_history(self) -> dict[str, list[LaneDesired]]:
        return {lane: self.history.of(lane) for lane in sorted(self.routes.lanes)}

    def recent_deliveries(self, job_id: str | None, limit: int = 100) -> list[WebhookDelivery]:
        """Webhook delivery records, last written first (one job's, or everyone's)."""
        if job_id:
            rows = self.deliveries.query(
                "SELECT value FROM rows WHERE job=? ORDER BY rowid DESC LIMIT ?", [job_id, limit]
            )
        else:
            rows = self.deliveries.query(
                "SELECT value FROM rows ORDER BY rowid DESC LIMIT ?", [limit]
            )
        return [WebhookDelivery.model_validate_json(v) for (v,) in rows]

    def dead_letters(self, limit: int = 100) -> list[tuple[str, WebhookMessage]]:
        """Dead-lettered webhooks, last written first: (key, message)."""
        rows = self.dead_webhooks.query(
            "SELECT key, value FROM rows ORDER BY rowid DESC LIMIT ?", [limit]
        )
        return [(k, WebhookMessage.model_validate_json(v)) for k, v in rows]

    def job(self, job_id: str) -> JobState | None:
        """The job's record; once there, the just-accepted entry is no longer needed."""
        job = self.jobs.get(job_id)
        if job is not None:
            self.accepted.pop(job_id, None)
        return job

    def known_fingerprint(self, job_id: str) -> str | None:
        job = self.job(job_id)
        if job is not None and job.fingerprint:
            return job.fingerprint
        return self.accepted.get(job_id)


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry or CollectorRegistry()
    state = GatewayState(settings, registry)

    if settings.console_enabled and settings.profile != "local" and settings.admin_token is None:
        raise SystemExit(
            "the console needs LANES_ADMIN_TOKEN outside the local profile "
            "(or LANES_CONSOLE_ENABLED=false to serve the API alone)"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="Lanes gateway",
        version="0.2.0",
        lifespan=lifespan,
        description="Image generation jobs. Every error is an RFC 9457 problem "
        "(application/problem+json) whose detail says why.",
    )
    app.state.lanes = state
    install_problem_handlers(app)
    ops_routes(app, registry, state.ready)

    async def accept(spec: GenerationSpec, idempotency_key: str | None) -> tuple[str, bool]:
        """Publish a request (quota, webhook target and idempotency checked first): its job
        id, and whether it replays an earlier one. HTTPException with the reason if not."""
        fp = fingerprint(spec)
        job_id = job_id_for(idempotency_key, spec.tenant)
        if idempotency_key is not None:
            previous = state.known_fingerprint(job_id)
            if previous is not None:
                if previous != fp:
                    state.requests.labels("idempotency_conflict").inc()
                    raise HTTPException(
                        422, "Idempotency-Key was already used with a different request body"
                    )
                state.requests.labels("replayed").inc()
                return job_id, True
        if spec.webhook_url is not None:  # refuse a private target now, not at delivery
            try:
                await resolve_target(str(spec.webhook_url), settings.webhook_allowed_hosts)
            except Unresolvable:
                pass  # DNS may recover before the job ends; delivery checks again
            except RefusedTarget as exc:
                state.requests.labels("invalid").inc()
                raise HTTPException(422, f"webhook_url refused: {exc}") from exc
        wait_s = state.quotas.take(spec.tenant or "")
        if wait_s is not None:
            state.requests.labels("over_quota").inc()
            raise HTTPException(
                429,
                f"tenant {spec.tenant or '(none)'} is over its request quota",
                headers={"Retry-After": TokenBuckets.retry_after_header(wait_s)},
            )
        with state.publish_seconds.time():
            try:
                assert state.client is not None
                # Bounded: with the cluster below min.insync.replicas the broker never
                # acknowledges, and the client gets a 503 to retry, not a hang.
                await asyncio.wait_for(
                    state.client.submit(spec, job_id=job_id), settings.publish_timeout_s
                )
            except Exception as exc:
                state.requests.labels("publish_failed").inc()
                log.error("publish_failed", job_id=job_id, error=str(exc) or type(exc).__name__)
                raise HTTPException(
                    503,
                    "the broker did not acknowledge the request; retry later with the same "
                    "Idempotency-Key (it may have been enqueued)",
                    headers={"Retry-After": "5"},
                ) from exc
        state.accepted[job_id] = fp
        state.requests.labels("accepted").inc()
        log.info("generation_accepted", job_id=job_id, intent=spec.intent)
        return job_id, False

    @app.post("/v1/generations", status_code=202, responses=problems(422, 429, 503))
    async def create_generation(
        spec: GenerationSpec,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> dict[str, Any]:
        job_id, replayed = await accept(spec, idempotency_key)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return _accepted(settings.public_base_url, job_id)

    def public(job: JobState) -> dict[str, Any]:
        body = job.public(settings.public_base_url)
        if job.status == "deferred":
            body["queue_position"] = state.jobs.queue_position(job)
        return body

    @app.get("/v1/generations", responses=problems(422))
    async def list_generations(
        request: Request,
        status: JobStatus | None = None,
        lane: Annotated[str | None, Query(max_length=100)] = None,
        intent: Literal["preview", "draft", "final"] | None = None,
        tenant: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=1000)] = None,
    ) -> dict[str, Any]:
        """Jobs newest first, filtered; ``next_cursor`` fetches the page after this one."""
        flt = JobFilter(status=status, lane=lane, intent=intent, tenant=tenant)
        try:
            jobs, next_cursor = state.jobs.page(flt, limit, cursor)
        except BadCursor as exc:
            raise HTTPException(422, str(exc)) from exc
        links: dict[str, str] = {}
        if next_cursor is not None:
            query = request.url.include_query_params(cursor=next_cursor).query
            links["next"] = f"{settings.public_base_url}/v1/generations?{query}"
        return {
            "items": [public(job) for job in jobs],
            "next_cursor": next_cursor,
            "links": links,
        }

    @app.get("/v1/generations/{job_id}", responses=problems(404))
    async def get_generation(job_id: str) -> dict[str, Any]:
        job = state.job(job_id)
        if job is not None:
            return public(job)
        if job_id in state.accepted:
            return {"job_id": job_id, "status": "queued"}
        raise HTTPException(404, f"no generation {job_id!r}")

    @app.get(
        "/v1/generations/{job_id}/events",
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
            **problems(404),
        },
        response_class=StreamingResponse,
    )
    async def generation_events(
        job_id: str,
        request: Request,
        last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    ) -> StreamingResponse:
        """The job's status changes, milestones and step progress as Server-Sent Events,
        until it ends; resumable with Last-Event-ID."""
        if state.job(job_id) is None and job_id not in state.accepted:
            raise HTTPException(404, f"no job {job_id}")
        try:
            resume = int(last_event_id or 0)
        except ValueError:
            resume = 0
        stream = job_events(
            lambda: state.job(job_id),
            public,
            last_event_id=resume,
            disconnected=request.is_disconnected,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def cancel(job_id: str) -> JobState | None:
        """Publish a cancel; the job as it was (None: accepted, not folded yet)."""
        job = state.job(job_id)
        if job is None and job_id not in state.accepted:
            raise HTTPException(404, f"no generation {job_id!r}")
        if job is not None and job.terminal:
            raise HTTPException(409, f"generation {job_id!r} already ended: {job.status}")
        try:
            assert state.client is not None
            await asyncio.wait_for(state.client.cancel(job_id), settings.publish_timeout_s)
        except Exception as exc:
            log.error("publish_failed", job_id=job_id, error=str(exc) or type(exc).__name__)
            raise HTTPException(
                503, "could not publish the cancel; retry", headers={"Retry-After": "5"}
            ) from exc
        return job

    @app.post("/v1/generations/{job_id}/cancel", status_code=202, responses=problems(404, 409, 503))
    async def cancel_generation(job_id: str) -> dict[str, Any]:
        """Cancel: a queued or deferred job at once, a rendering one at its next step. The
        job stays readable (status ``canceled``) until retention deletes it."""
        job = await cancel(job_id)
        log.info("generation_cancel_requested", job_id=job_id)
        running = job is not None and job.status == "running"
        return {
            "job_id": job_id,
            "status": "canceling" if running else "canceled",
            "links": {"self": f"{settings.public_base_url}/v1/generations/{job_id}"},
        }

    async def _file(uri: str) -> Response:
        try:
            data = await asyncio.to_thread(state.store.get, uri)
        except ArtifactError as exc:
            raise HTTPException(410, str(exc)) from exc
        except ArtifactUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
        return Response(data, media_type="image/png")

    png = {200: {"content": {"image/png": {}}, "description": "The PNG image"}}

    @app.get(
        "/v1/generations/{job_id}/image",
        response_model=None,
        response_class=Response,
        responses={**png, **problems(404, 409, 410, 503)},
    )
    async def get_image(job_id: str) -> Response:
        """The job's delivered image (or its latest, before one is chosen)."""
        job = state.job(job_id)
        if job is None and job_id in state.accepted:
            raise HTTPException(409, f"generation {job_id!r} has no image yet (queued)")
        if job is None:
            raise HTTPException(404, f"no generation {job_id!r}")
        if not job.artifacts:
            raise HTTPException(409, f"generation {job_id!r} has no image yet ({job.status})")
        return await _file((job.delivered or job.artifacts[-1]).uri)

    @app.get(
        "/v1/generations/{job_id}/artifacts/{name}",
        response_model=None,
        response_class=Response,
        responses={**png, **problems(404, 410, 503)},
    )
    async def get_artifact(job_id: str, name: str) -> Response:
        """One of the job's images by the name its URL carries (drafts, repaired...)."""
        job = state.job(job_id)
        if job is None:
            raise HTTPException(404, f"no generation {job_id!r}")
        for uri in job.artifact_uris():
            if artifact_name(uri) == name:
                return await _file(uri)
        raise HTTPException(404, f"generation {job_id!r} has no artifact {name!r}")

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        """Admin reads need ``Authorization: Bearer <LANES_ADMIN_TOKEN>`` when one is set."""
        token = settings.admin_token
        if token is not None and not secrets.compare_digest(
            authorization or "", f"Bearer {token.get_secret_value()}"
        ):
            raise HTTPException(401, "admin endpoints need Authorization: Bearer <admin token>")

    @app.get("/v1/admin/lanes", dependencies=[Depends(admin)], responses=problems(401))
    async def admin_lanes() -> list[LaneRollout]:
        """Every lane: desired model versions, canary, caps, and each worker instance."""
        return state.rollout.lanes()

    @app.get("/v1/admin/lanes/{lane}", dependencies=[Depends(admin)], responses=problems(401, 404))
    async def admin_lane(lane: str) -> LaneRollout:
        for item in state.rollout.lanes():
            if item.lane == lane:
                return item
        raise HTTPException(404, f"no lane {lane!r}")

    if settings.console_enabled:
        install_console(app, ConsoleDeps(state, settings, accept, cancel, public))
    return app


def _accepted(base_url: str, job_id: str) -> dict[str, Any]:
    job = f"{base_url}/v1/generations/{job_id}"
    return {
        "job_id": job_id,
        "status": "queued",
        "links": {
            "self": job,
            "image": f"{job}/image",
            "cancel": f"{job}/cancel",
        },
    }
