"""The model versions one lane worker serves, as ``lanes.control`` asks.

- A new desired revision loads its versions in the background (a thread) while the worker
  keeps serving what it has; the switch happens between jobs, never during one (each job
  takes its engine at admission and keeps it).
- The previous stable version stays loaded for a fast rollback; anything else is dropped.
- A version that fails to load is recorded in ``load_errors`` (the heartbeat carries it to
  the control plane, which rolls it back); the worker keeps serving the old version.
- Canary: ``percent`` of jobs, chosen by a hash of the job id (the same job always lands on
  the same version), run on the canary version.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable

import structlog

from schemas.control import LaneDesired, ModelRef
from services.config.routes import ModelSpec, Routes, checkpoint_dir
from services.config.settings import Settings
from services.domain.control_state import initial_state
from services.engines.batching import BatchProfile, profile_batching, warm_up
from services.engines.diffusion import DiffusionEngine
from services.engines.engine import Engine
from services.engines.hosted.engine import HostedEngine, HostedModel
from services.engines.hosted.google import GeminiImage, ImagenPredict
from services.engines.hosted.ideogram import IdeogramLegacy, IdeogramV3
from services.engines.hosted.prices import LIST_PRICES_USD
from services.engines.memory import MemoryBudget
from services.engines.tiny import TinyConfig

__all__ = ["LaneModels", "canary_bucket", "load_model", "load_routes_model", "hosted_engine"]

log = structlog.get_logger("lanes.models")

# diffusers' lazy imports are not thread-safe: loads in one process go one at a time.
_LOAD_LOCK = threading.Lock()


def canary_bucket(job_id: str) -> int:
    """0-99, stable per job id."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") % 100


def model_spec(routes: Routes, ref: ModelRef) -> ModelSpec:
    if ref.path is not None:
        return ModelSpec(version=ref.version, path=ref.path)
    if ref.tiny_seed is not None:
        return ModelSpec(version=ref.version, tiny=TinyConfig(seed=ref.tiny_seed))
    spec = routes.models.get(routes.resolve_model(ref.model)[0])
    if spec is None or spec.version != ref.version:
        raise LookupError(f"{ref.label} is not in this worker's routes file")
    return spec


def hosted_engine(settings: Settings, name: str, spec: ModelSpec, refine: bool) -> HostedEngine:
    """The adapter for a hosted model; its key from the variable ``api_key_env`` names."""
    assert spec.api_key_env and spec.model_id and spec.base_url
    key = settings.provider_key(spec.api_key_env)
    if key is None:
        raise LookupError(f"model {name!r}: {spec.api_key_env} (its API key) is not set")
    model = HostedModel(
        name=name,
        version=spec.version,
        provider=spec.provider,
        model_id=spec.model_id,
        base_url=spec.base_url,
        api_key=key,
        download_hosts=spec.download_hosts,
        options=dict(spec.options),
        price_usd=spec.price_usd,
        timeout_s=spec.timeout_s,
        max_retries=spec.max_retries,
        probe_s=spec.probe_s,
        refine=refine,
    )
    if spec.price_usd is None and not any(
        k[:2] == (spec.provider, spec.model_id) for k in LIST_PRICES_USD
    ):
        log.warning("model_has_no_price", model=name)
    if spec.provider == "ideogram":
        legacy = not spec.model_id.upper().startswith("V_3")
        return (IdeogramLegacy if legacy else IdeogramV3)(model)
    return (GeminiImage if spec.provider == "gemini" else ImagenPredict)(model)


def load_model(
    settings: Settings,
    lane: str,
    routes: Routes,
    ref: ModelRef,
    reserved: Callable[[], int] | None = None,
) -> Engine:
    """Load one version for ``lane`` (blocking: call from a thread). ``reserved``: bytes the
    worker's other models hold, counted against the same budget."""
    spec = model_spec(routes, ref)
    refine = routes.lanes[lane].refine_strength is not None
    if spec.hosted:
        return hosted_engine(settings, routes.resolve_model(ref.model)[0], spec, refine)
    with _LOAD_LOCK:
        path = checkpoint_dir(ref.model, spec, settings.models_path)
        return DiffusionEngine.load(
            path,
            name=ref.model,
            version=ref.version,
            device=settings.worker.device,
            budget=MemoryBudget.from_gb(settings.worker.memory_budget_gb, reserved or (lambda: 0)),
            compile_unet=settings.worker.compile_unet,
            refine=refine,
            price_usd=spec.price_usd,
            gpu_usd_per_hour=spec.gpu_usd_per_hour,
        )


def load_routes_model(settings: Settings, lane: str, routes: Routes) -> Engine:
    """The version the routes file names for ``lane`` (benchmarks, tools)."""
    return load_model(settings, lane, routes, initial_state(routes, lane).stable)


Loader = Callable[[ModelRef], Engine]


class LaneModels:
    def __init__(self, settings: Settings, lane: str, routes: Routes) -> None:
        self.lane = lane
        self.spec = routes.lanes[lane]
        self.calibrate = settings.worker.batch_calibration
        # The weights of the worker's other lanes' models (an assisting worker's guests and
        # host share one budget); set by the worker before it loads them.
        self.neighbours: list[LaneModels] = []
        self.load: Loader = lambda ref: load_model(settings, lane, routes, ref, self.reserved_bytes)
        # (model, version) -> its start-up batching profile (when calibration is on)
        self.batch_profiles: dict[tuple[str, str], BatchProfile] = {}
        self.desired: LaneDesired = initial_state(routes, lane)
        self.engines: dict[ModelRef, Engine] = {}
        # Called with each engine as it loads (the worker wires its metrics to hosted ones).
        self.observe: Callable[[Engine], None] | None = None
        self.stable: ModelRef = self.desired.stable
        self.canary: ModelRef | None = None
        self.canary_percent = 0
        self.applied_revision = 0
        self.load_errors: dict[str, str] = {}

    async def start(self, desired: LaneDesired | None) -> Engine:
        """Load what the lane runs now (its desired state, else the routes file's version);
        falls back to the routes file's version when the desired one cannot be loaded."""
        if desired is not None:
            await self.apply(desired)
        if self.stable not in self.engines:
            await self._load(self.stable)
        return self.engines[self.stable]

    async def _load(self, ref: ModelRef) -> Engine:
        if ref not in self.engines:
            engine = await asyncio.to_thread(self._load_warm, ref)
            if self.observe is not None:
                self.observe(engine)
            self.engines[ref] = engine
            log.info("model_loaded", lane=self.lane, model=ref.model, version=ref.version)
        return self.engines[ref]

    def _load_warm(self, ref: ModelRef) -> Engine:
        """Load, then render once at the lane's size before the version serves (and, with
        calibration, measure what batching buys). A version that fails this still loads:
        its jobs fail and the canary judge or the operator decides. A hosted engine is not
        warmed (a call costs money; there is nothing local to warm)."""
        engine = self.load(ref)
        if not engine.on_device:
            return engine
        s = self.spec
        shape = (s.width, s.height, s.sample_steps, s.guidance_scale, s.refine_strength)
        try:
            if self.calibrate and s.max_batch > 1:
                profile = profile_batching(engine, s.max_batch, *shape)
                self.batch_profiles[(ref.model, ref.version)] = profile
                log.info(
                    "batching_profiled",
                    lane=self.lane,
                    model=ref.model,
                    version=ref.version,
                    ms_per_image={b: round(t * 1000, 1) for b, t in profile.per_image_s.items()},
                    batch_cap=profile.cap,
                    max_batch=s.max_batch,
                )
            else:
                log.info(
                    "model_warmed",
                    lane=self.lane,
                    model=ref.model,
                    version=ref.version,
                    seconds=round(warm_up(engine, *shape), 3),
                )
        except Exception as exc:  # noqa: BLE001 - warming is not the gate; jobs and the judge are
            log.warning(
                "warm_up_failed",
                lane=self.lane,
                model=ref.model,
                version=ref.version,
                error=str(exc)[:300],
            )
        return engine

    @property
    def footprint_bytes(self) -> int:
        return sum(e.footprint_bytes for e in self.engines.values())

    def reserved_bytes(self) -> int:
        return sum(n.footprint_bytes for n in self.neighbours)

    def batch_cap(self, model: str, version: str) -> int:
        """How many jobs one batch of this version may hold."""
        for ref, engine in self.engines.items():
            if (ref.model, ref.version) == (model, version) and engine.batch_limit:
                return min(self.spec.max_batch, engine.batch_limit)
        profile = self.batch_profiles.get((model, version))
        return self.spec.max_batch if profile is None else profile.cap

    @property
    def labels(self) -> tuple[str, str, str]:
        """Worker-level metric labels: the lane and the stable version it serves."""
        return (self.lane, self.stable.model, self.stable.version)

    @property
    def max_concurrency(self) -> int:
        return self.desired.max_concurrency or self.spec.max_concurrency

    @property
    def paused(self) -> bool:
        return self.desired.paused

    def is_stable(self, engine: Engine) -> bool:
        return self.engines.get(self.stable) is engine

    def steps(self, routed_steps: int) -> int:
        return self.desired.sample_steps or routed_steps

    @property
    def provider_paused(self) -> bool:
        """A hosted engine of this lane sends nothing now (cheap: for every fetch round)."""
        return any(e.throttled() or e.refusing() for e in self.engines.values())

    @property
    def engine_states(self) -> dict[str, str]:
        """Hosted engines not calling now (throttled, or paused by the provider's refusal)."""
        return {ref.label: state for ref, engine in self.engines.items() if (state := engine.state)}

    def engine_for(self, job_id: str, stable_only: bool = False) -> Engine:
        if (
            not stable_only
            and self.canary is not None
            and canary_bucket(job_id) < self.canary_percent
        ):
            return self.engines[self.canary]
        return self.engines[self.stable]

    async def apply(self, desired: LaneDesired) -> None:
        """Load what ``desired`` names, then switch to it (between jobs)."""
        if desired.revision <= self.applied_revision:
            return
        self.desired = desired
        wanted = [desired.stable] + ([desired.canary.target] if desired.canary else [])
        for ref in wanted:
            if ref in self.engines:
                continue
            try:
                await self._load(ref)
                self.load_errors.pop(ref.label, None)
            except Exception as exc:  # noqa: BLE001 - a bad version must not stop the worker
                self.load_errors[ref.label] = f"{type(exc).__name__}: {exc}"[:500]
                log.error(
                    "model_load_failed",
                    lane=self.lane,
                    model=ref.model,
                    version=ref.version,
                    error=str(exc)[:300],
                )
        if desired.stable in self.engines:
            self.stable = desired.stable
        target = desired.canary.target if desired.canary else None
        self.canary = target if target in self.engines else None
        self.canary_percent = desired.canary.percent if desired.canary and self.canary else 0
        keep = {self.stable, self.canary, desired.previous}
        for ref in [r for r in self.engines if r not in keep]:
            del self.engines[ref]  # the GPU thread frees it once no batch holds it
        self.load_errors = {
            k: v for k, v in self.load_errors.items() if k in {r.label for r in wanted}
        }
        self.applied_revision = desired.revision
        log.info(
            "revision_applied",
            lane=self.lane,
            revision=desired.revision,
            stable=self.stable.label,
            canary=self.canary.label if self.canary else None,
            percent=self.canary_percent,
            load_errors=self.load_errors,
        )

    async def close(self) -> None:
        """Close the hosted engines' HTTP clients (the worker is stopping)."""
        for engine in self.engines.values():
            await engine.aclose()

    async def reload(self) -> None:
        """A restart: load every served version afresh from its checkpoint."""
        refs = list(self.engines)
        await self.close()  # (a restart drains first: no call is in flight)
        self.engines.clear()
        for ref in refs:
            await self._load(ref)
