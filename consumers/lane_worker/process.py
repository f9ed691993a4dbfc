"""Start one lane worker process: its lane's models, the guests' models, then the workers.

The models load before the process joins any group (load, warm-up and batch profile take
seconds to minutes); the lane's current desired state on ``lanes.control`` decides which
version loads first. Then the host and its guests run inside one ``Member``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from consumers.lane_worker.gpu_process import GpuProcess, Urgency
from consumers.lane_worker.models import LaneModels
from consumers.lane_worker.startup import StartupPhases
from consumers.lane_worker.worker import LaneWorker
from consumers.machinery.runtime import Member, stop_on_signals
from schemas.control import LaneDesired
from services.config.routes import Routes, load_routes
from services.config.settings import Settings
from services.kafka.control_view import ControlView
from services.process.exit import exit_now
from services.process.tuning import freeze_startup_heap
from services.storage.outage import wait_out_outage

__all__ = ["run", "load_guests"]

log = structlog.get_logger("lanes.worker")


async def load_guests(
    settings: Settings,
    routes: Routes,
    lane: str,
    models: LaneModels,
    control: dict[str, LaneDesired],
) -> dict[str, LaneModels]:
    """The models of each lane this worker assists or backfills, within the one memory
    budget it shares with its own lane's models. A lane whose model does not fit is not
    helped (logged); the worker still serves its own lane."""
    loaded: dict[str, LaneModels] = {}
    if not settings.worker.assist:
        return loaded
    for helped in routes.lanes[lane].assists + routes.lanes[lane].backfills:
        guest = LaneModels(settings, helped, routes)
        guest.neighbours = [models, *loaded.values()]
        try:
            engine = await guest.start(control.get(helped))
        except Exception as exc:  # noqa: BLE001 - assisting is optional; serving the lane is not
            log.error("assist_refused", lane=lane, helps=helped, error=str(exc)[:300])
            continue
        log.info(
            "assist_loaded",
            lane=lane,
            helps=helped,
            model=engine.name,
            version=engine.version,
            footprint_mb=round(engine.footprint_bytes / 2**20, 1),
        )
        for other in (models, *loaded.values()):
            other.neighbours.append(guest)
        loaded[helped] = guest
    return loaded


async def run(
    settings: Settings,
    lane: str,
    stop: asyncio.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
    on_ready: Any = None,
    instance: str | None = None,
) -> None:
    # Before the (slow) model load: a SIGTERM while loading ends the process at once.
    own_process = stop is None
    stop = stop_on_signals(stop)
    phases = StartupPhases()
    log.info("worker_starting", lane=lane, instance=instance)
    starting = asyncio.create_task(_start(settings, lane, registry, instance, phases))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not starting.done():
        # Nothing is held yet (no group joined, no job taken): the load in progress is not
        # waited for. In its own process the worker exits now; the loading thread would
        # otherwise hold the interpreter's exit until the model had loaded for nothing.
        log.info("worker_stopped_while_starting", lane=lane, phases_done=list(phases.seconds))
        starting.cancel()
        if own_process:
            exit_now(0)
        return
    worker = starting.result()
    if on_ready is not None:
        on_ready(worker)
    member = Member(
        settings,
        client_id=f"lanes-worker-{lane}",
        registry=worker.process.registry,
        ready=lambda: worker.all_ready,
        stop=stop,
    )
    async with member:
        worker.process.outbox.member = member
        await worker.run(member.stop)


async def _start(
    settings: Settings,
    lane: str,
    registry: CollectorRegistry | None,
    instance: str | None,
    phases: StartupPhases,
) -> LaneWorker:
    """The lane's worker (and its guests) with their models loaded, phase by phase."""
    routes = load_routes(settings.routes_file)
    if lane not in routes.lanes:
        raise SystemExit(f"lane {lane!r} is not in the routes file (lanes: {sorted(routes.lanes)})")
    for notice in routes.notices(lane):
        log.warning("retired_model", lane=lane, notice=notice)
    shared = GpuProcess.for_lane(
        settings, routes, lane, registry or CollectorRegistry(), instance=instance
    )
    # An unusable artifact store fails start-up with the reason, before any model loads; one
    # that is only away for now is waited out first (a restart during an outage must not
    # crash-loop).
    await wait_out_outage(
        shared.store.check, bound_s=settings.storage.outage_wait_s, what="store check"
    )
    phases.mark("store_check")
    models = LaneModels(settings, lane, routes)
    started = time.perf_counter()
    # Start on the lane's current version, not the routes file's only to switch at once.
    control = await ControlView(settings).load()
    phases.mark("control_state")
    engine = await models.start(control.get(lane))
    phases.mark("models")
    log.info(
        "engine_loaded",
        lane=lane,
        model=engine.name,
        version=engine.version,
        device=engine.device,
        load_s=round(time.perf_counter() - started, 2),
        footprint_mb=round(engine.footprint_bytes / 2**20, 1),
    )
    guest_models = await load_guests(settings, routes, lane, models, control)
    phases.mark("guest_models")
    shared.startup = phases
    freeze_startup_heap()  # torch, diffusers and the models: ~500k objects no collection scans
    worker = LaneWorker(shared, lane, models)
    for helped, helped_models in guest_models.items():
        assisted = helped in routes.lanes[lane].assists  # else a lane it backfills
        LaneWorker(
            shared, helped, helped_models, Urgency.ASSISTED if assisted else Urgency.BACKFILL
        )
    return worker
