"""What the gateway reads, each followed from its topic into this replica's own files:
jobs (``lanes.jobs`` in SQLite), rollout state, lanes' lag, revision history, webhook
deliveries and dead letters. ``GatewayViews`` owns their follower tasks (start/stop) and
says whether they are all alive and caught up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from cachetools import TTLCache

from schemas.control import LaneDesired, live_workers
from schemas.events import utcnow
from schemas.records import JobState, WebhookDelivery, WebhookMessage
from schemas.topics import Topics
from services.apps.console.history import RevisionHistory
from services.config.routes import Routes
from services.config.settings import Settings
from services.domain.job_index import JobFilter, JobIndex, micros
from services.domain.rollout import RolloutView
from services.kafka.lag_monitor import LagMonitor
from services.kafka.sqlite_view import SqliteView

__all__ = ["GatewayViews", "Followers", "Accepted"]

log = structlog.get_logger("lanes.gateway")


class Followers:
    """Named background tasks: started together, cancelled together; a dead one (it raised)
    makes its owner unready."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, **coros: Callable[[], Awaitable[None]]) -> None:
        for name, make in coros.items():
            self.tasks.append(asyncio.create_task(make(), name=name))  # type: ignore[arg-type]

    def dead(self) -> list[str]:
        dead = [t for t in self.tasks if t.done() and not t.cancelled()]
        for task in dead:
            log.error("gateway_follower_died", task=task.get_name(), error=repr(task.exception()))
        return [t.get_name() for t in dead]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel every task and wait for it, cancelling again each second: a cancellation
        can be lost (Python 3.11's ``wait_for`` drops one that meets its inner result), and
        a task that outlives its owner keeps the event loop from ever closing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = set(self.tasks)
        while pending and loop.time() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.error("gateway_followers_not_stopped", tasks=[t.get_name() for t in pending])
        self.tasks = []


class Accepted:
    """Jobs this gateway accepted that ``lanes.jobs`` may not show yet: id -> (fingerprint,
    tenant). Bounded: the jobs consumer folds a request within seconds."""

    def __init__(self) -> None:
        self._items: TTLCache[str, tuple[str, str | None]] = TTLCache(maxsize=50_000, ttl=600)

    def add(self, job_id: str, fingerprint: str, tenant: str | None) -> None:
        self._items[job_id] = (fingerprint, tenant)

    def get(self, job_id: str) -> tuple[str, str | None] | None:
        return self._items.get(job_id)

    def forget(self, job_id: str) -> None:
        self._items.pop(job_id, None)


class GatewayViews:
    """The job view and the console's views; implements the routers' ``JobReader``."""

    def __init__(self, settings: Settings, routes: Routes) -> None:
        self.settings = settings
        self.routes = routes
        topics = Topics(settings.topic_prefix)
        self.jobs = JobIndex(settings, topics.jobs, settings.view_path("gateway-jobs"))
        self.accepted = Accepted()
        self.rollout = RolloutView(settings, routes)
        self.lags = LagMonitor(
            settings, sorted(routes.lanes), every_s=2.0, spill=routes.spill_lanes
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
        self.followers = Followers()

    async def start(self) -> None:
        self.followers.start(
            jobs_view=self.jobs.view.follow,
            rollout_view=self.rollout.follow,
            lane_lags=self.lags.run,
            revision_history=self.history.follow,
            deliveries_view=self.deliveries.follow,
            webhooks_dlq=self.dead_webhooks.follow,
            retention=self._forget_expired,
        )

    async def stop(self) -> None:
        await self.followers.stop()
        await self.lags.close()
        self.jobs.view.close()
        self.deliveries.close()
        self.dead_webhooks.close()

    def ready(self) -> bool:
        """The jobs view caught up and no follower died (a dead view serves stale status:
        better out of the load balancer, with the reason logged)."""
        return self.jobs.view.caught_up.is_set() and not self.followers.dead()

    async def _forget_expired(self) -> None:
        """Drop rows a day past retention whose tombstone this view never read (it was
        compacted away while this gateway was down); the jobs consumer deletes the rest."""
        while True:
            cutoff = utcnow() - timedelta(days=self.settings.storage.retention_days + 1)
            self.jobs.view.delete_where("finished < ?", [micros(cutoff)])
            await asyncio.sleep(self.settings.storage.retention_sweep_s)

    # ---- JobReader ------------------------------------------------------------------------

    def job(self, job_id: str) -> JobState | None:
        """The job's record; once there, the just-accepted entry is no longer needed."""
        job = self.jobs.get(job_id)
        if job is not None:
            self.accepted.forget(job_id)
        return job

    def page(
        self, flt: JobFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[JobState], str | None]:
        return self.jobs.page(flt, limit, cursor)

    def serving(self, lane: str) -> bool:
        """A live worker of the lane (its own queue) reports ready."""
        ready = [s for s in self.rollout.workers.items.values() if s.health == "ready"]
        return bool(live_workers(ready, lane, self.settings.control.worker_stale_s, "lane"))

    def queue_position(self, job: JobState, tenant: str | None = None) -> int:
        return self.jobs.queue_position(job, tenant)

    # ---- the console's --------------------------------------------------------------------

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
