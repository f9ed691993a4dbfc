"""Control plane [group lanes-control]: signed ops commands -> each lane's desired state,
automatic rollback of bad versions, and the autoscaling signal.

- ``lanes.ops``: refuses unsigned, forged, stale, replayed or invalid commands with a logged
  reason (and an ``OpsResult`` on ``lanes.ops.results``); applies the rest and publishes the
  lane's new desired state, revision + 1, to the compacted ``lanes.control``.
- ``lanes.renders`` and ``lanes.verifications``: outcomes per lane and version. When a
  canary's render or verification failure rate exceeds the stable version's by
  ``canary_margin`` after ``canary_min_jobs``, the canary is rolled back: a new revision
  on ``lanes.control`` with ``actor: control-plane`` and the reason.
- ``lanes.workers``: heartbeats. A version that an instance failed to load at the lane's
  current revision is rolled back the same way (a canary is dropped, a fresh deploy returns
  to the previous version).
- Every few seconds, each lane's desired replica count from its consumer lag and measured
  throughput (``services.domain.autoscale``), exported on /metrics.

State is rebuilt from ``lanes.control`` on every assignment, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from prometheus_client import CollectorRegistry, Gauge

from consumers.machinery.loop import MessageContext, Output
from consumers.machinery.restoring import RestoringListener
from consumers.machinery.runtime import run_consumer
from producers.exceptions import ForgedCommand
from producers.ops import verify_command
from schemas.control import LaneDesired, ModelRef, OpsResult, WorkerStatus, live_workers
from schemas.events import (
    RenderCompleted,
    RenderFailed,
    RenderRerouted,
    VerificationCompleted,
    parse_job_event,
)
from schemas.ops import SignedCommand
from schemas.topics import Topics
from services.config.routes import Routes, load_routes
from services.config.settings import Settings
from services.domain.autoscale import LaneSample, ThroughputMeter, desired_replicas
from services.domain.canary import CanaryJudge
from services.domain.control_state import Rejected, apply_command, auto_rollback, initial_state
from services.kafka.control_view import ControlView
from services.kafka.lag_monitor import LagMonitor, spill_key

__all__ = ["run", "ControlPlane"]

log = structlog.get_logger("lanes.control")

AUTOSCALE_EVERY_S = 5.0


class ControlPlane(RestoringListener):
    def __init__(self, settings: Settings, routes: Routes, registry: CollectorRegistry) -> None:
        super().__init__()
        self.settings = settings
        self.routes = routes
        self.topics = Topics(settings.topic_prefix)
        self.key = settings.control.ops_key.get_secret_value()
        self.view = ControlView(settings, registry)
        self.signer = settings.control_signer()
        self.judge = CanaryJudge(settings.control.canary_min_jobs, settings.control.canary_margin)
        self.workers: dict[str, WorkerStatus] = {}
        self.meter = ThroughputMeter()
        self.desired_replicas = Gauge(
            "lanes_autoscale_desired_replicas",
            "Replicas the lane needs (lag and throughput)",
            ["lane"],
            registry=registry,
        )
        self.replicas = Gauge(
            "lanes_lane_replicas", "Live worker instances", ["lane"], registry=registry
        )
        self.lag = Gauge(
            "lanes_lane_consumer_lag",
            "Jobs waiting in the lane's topic",
            ["lane"],
            registry=registry,
        )
        self.throughput = Gauge(
            "lanes_lane_jobs_per_second",
            "Jobs the lane finishes per second",
            ["lane"],
            registry=registry,
        )
        self.revision = Gauge(
            "lanes_control_revision",
            "The lane's desired-state revision",
            ["lane"],
            registry=registry,
        )
        self.rollbacks = Gauge(
            "lanes_control_auto_rollbacks",
            "Automatic rollbacks since start",
            ["lane"],
            registry=registry,
        )

    async def restore(self, partitions: list[int]) -> None:
        await self.view.load()
        for lane, state in self.view.items.items():
            self.revision.labels(lane).set(state.revision)
        log.info(
            "control_state_restored", lanes={k: v.revision for k, v in self.view.items.items()}
        )

    def state(self, lane: str) -> LaneDesired:
        return self.view.items.get(lane) or initial_state(self.routes, lane)

    async def handle(self, raw: bytes, ctx: MessageContext) -> Sequence[Output]:
        await self.restored()
        if ctx.topic == self.topics.ops:
            return self._command(SignedCommand.model_validate_json(raw))
        if ctx.topic == self.topics.workers:
            return self._heartbeat(WorkerStatus.model_validate_json(raw))
        return self._outcome(parse_job_event(raw))

    # ---- ops commands ------------------------------------------------------------------

    def _command(self, signed: SignedCommand) -> list[Output]:
        try:
            cmd = verify_command(signed, self.key)
        except (ForgedCommand, ValueError) as exc:
            return self._reject(signed.id, "?", "?", f"not authentic: {exc}")
        if cmd.lane not in self.routes.lanes:
            return self._reject(cmd.command_id, cmd.lane, cmd.action, f"unknown lane {cmd.lane!r}")
        try:
            new = apply_command(self.state(cmd.lane), cmd, self.routes)
        except Rejected as exc:
            return self._reject(cmd.command_id, cmd.lane, cmd.action, str(exc))
        if new.canary is not None and cmd.action == "canary":
            self.judge.reset(cmd.lane, new.canary.target)
        log.info(
            "ops_applied",
            command_id=cmd.command_id,
            lane=cmd.lane,
            action=cmd.action,
            issuer=cmd.issuer,
            revision=new.revision,
            stable=new.stable.version,
            canary=new.canary.target.version if new.canary else None,
        )
        result = OpsResult(
            command_id=cmd.command_id,
            lane=cmd.lane,
            action=cmd.action,
            outcome="applied",
            revision=new.revision,
        )
        return [
            self._publish(new),
            Output(self.topics.ops_results, cmd.command_id, result.model_dump_json().encode()),
        ]

    def _publish(self, new: LaneDesired) -> Output:
        self.view.items[new.lane] = new
        self.revision.labels(new.lane).set(new.revision)
        return Output(self.topics.control, new.lane, self.signer.sign(new))

    def _reject(self, command_id: str, lane: str, action: str, reason: str) -> list[Output]:
        log.warning("ops_rejected", command_id=command_id, lane=lane, action=action, reason=reason)
        result = OpsResult(
            command_id=command_id, lane=lane, action=action, outcome="rejected", reason=reason
        )
        return [Output(self.topics.ops_results, command_id, result.model_dump_json().encode())]

    # ---- automatic rollback ------------------------------------------------------------

    def _outcome(self, event: object) -> list[Output]:
        if isinstance(event, RenderCompleted):
            self.judge.render(event.lane, event.model, event.version, ok=True)
            lane = event.lane
        elif isinstance(event, (RenderFailed, RenderRerouted)) and event.model and event.version:
            self.judge.render(event.lane, event.model, event.version, ok=False)
            lane = event.lane
        elif (
            isinstance(event, VerificationCompleted)
            and event.lane
            and event.model
            and event.version
        ):
            self.judge.verification(event.lane, event.model, event.version, passed=event.passed)
            lane = event.lane
        else:
            return []
        if lane not in self.routes.lanes:
            return []
        state = self.state(lane)
        reason = self.judge.verdict(state)
        if reason is None or state.canary is None:
            return []
        return self._roll_back(state, state.canary.target, reason)

    def _heartbeat(self, status: WorkerStatus) -> list[Output]:
        self.workers[status.instance] = status
        self.meter.observe(status)
        if status.lane not in self.routes.lanes:
            return []
        state = self.state(status.lane)
        if status.applied_revision != state.revision:
            return []  # an error about an older revision is already history
        for ref in ([state.canary.target] if state.canary else []) + [state.stable]:
            error = status.load_errors.get(ref.label)
            if error:
                return self._roll_back(
                    state, ref, f"{ref.label} failed to load on {status.instance}: {error}"
                )
        return []

    def _roll_back(self, state: LaneDesired, bad: ModelRef, reason: str) -> list[Output]:
        new = auto_rollback(state, bad, reason)
        if new is None:
            log.error("rollback_impossible", lane=state.lane, version=bad.label, reason=reason)
            return []
        self.rollbacks.labels(state.lane).inc()
        log.warning(
            "automatic_rollback",
            lane=state.lane,
            version=bad.label,
            reason=reason,
            revision=new.revision,
        )
        return [self._publish(new)]

    # ---- autoscaling signal ------------------------------------------------------------

    async def autoscale_loop(self) -> None:
        previous: dict[str, tuple[float, int]] = {}
        monitor = LagMonitor(
            self.settings,
            sorted(self.routes.lanes),
            AUTOSCALE_EVERY_S,
            spill=self.routes.spill_lanes,
        )
        try:
            while True:
                await asyncio.sleep(AUTOSCALE_EVERY_S)
                try:
                    lags = await monitor.poll()
                except Exception as exc:  # noqa: BLE001 - a signal, never a reason to stop
                    log.warning("autoscale_lag_unavailable", error=str(exc)[:300])
                    await monitor.close()
                    continue
                self._autoscale(lags, previous)
        finally:
            await monitor.close()

    def _autoscale(self, lags: dict[str, int], previous: dict[str, tuple[float, int]]) -> None:
        """Publish each lane's lag, live replicas, throughput and desired replicas."""
        now = asyncio.get_running_loop().time()
        for lane in sorted(self.routes.lanes):
            # A lane's burst overflow is its work too; its replicas are its own workers
            # (guests that serve the overflow are borrowed from other lanes).
            lag = lags.get(lane, 0) + lags.get(spill_key(lane), 0)
            live = self.live_instances(lane, serves="lane")
            last = previous.get(lane)
            growth = (lag - last[1]) / (now - last[0]) if last and now > last[0] else 0.0
            previous[lane] = (now, lag)
            sample = LaneSample(
                lag=lag,
                lag_growth_per_s=growth,
                replicas=len(live),
                jobs_per_s=self.meter.rate(live),
            )
            self.lag.labels(lane).set(lag)
            self.replicas.labels(lane).set(len(live))
            self.throughput.labels(lane).set(sample.jobs_per_s)
            self.desired_replicas.labels(lane).set(
                desired_replicas(
                    sample,
                    drain_s=self.settings.control.autoscale_drain_s,
                    max_replicas=self.settings.control.autoscale_max_replicas,
                )
            )

    def live_instances(self, lane: str, serves: str | None = None) -> list[str]:
        return live_workers(
            self.workers.values(), lane, self.settings.control.worker_stale_s, serves
        )


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> None:
    registry = registry or CollectorRegistry()
    plane = ControlPlane(settings, load_routes(settings.routes_file), registry)
    scaler = asyncio.create_task(plane.autoscale_loop(), name="autoscale")
    try:
        await run_consumer(
            settings,
            group=settings.groups.control,
            registry=registry,
            topics=[
                plane.topics.ops,
                plane.topics.renders,
                plane.topics.verifications,
                plane.topics.workers,
            ],
            parse=lambda raw: raw,
            handler=plane.handle,
            stop=stop,
            listener=plane,
        )
    finally:
        scaler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scaler
