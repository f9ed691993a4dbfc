"""The routes file: models, lanes and which lane serves each intent."""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.spec import Priority
from services.engines.tiny import TinyConfig, build_tiny_checkpoint

__all__ = [
    "ModelSpec",
    "AdmissionSpec",
    "SpillSpec",
    "LaneSpec",
    "CascadeSpec",
    "TypographySpec",
    "Routes",
    "load_routes",
    "routes_text",
    "checkpoint_dir",
]


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    path: Path | None = None  # a local diffusers checkpoint directory
    tiny: TinyConfig | None = None  # or a tiny random-weight build from config

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("a model needs exactly one of 'path' (checkpoint dir) or 'tiny'")
        return self


class CascadeSpec(BaseModel):
    """After the draft, a refine/upscale pass on ``lane`` at the target size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lane: str
    width: int = Field(ge=64, le=4096, multiple_of=8)
    height: int = Field(ge=64, le=4096, multiple_of=8)


class TypographySpec(BaseModel):
    """What happens when the delivered image does not show the expected text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repair: bool = True  # composite the exact text onto the image, then verify again
    fallback_lane: str | None = None  # final intent: re-render there when still failing
    max_attempts: int = Field(2, ge=1, le=10)  # renders in all, the first included


class AdmissionSpec(BaseModel):
    """During a burst (the lane's lag above ``defer_lag``), jobs of these priorities are
    parked on ``lanes.deferred`` for ``defer_s`` at a time; critical jobs never are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    defer_lag: int = Field(ge=0)
    defer_s: float = Field(5.0, gt=0)
    defer_priorities: tuple[Priority, ...] = ("low",)

    @model_validator(mode="after")
    def _never_critical(self) -> AdmissionSpec:
        if "critical" in self.defer_priorities:
            raise ValueError("critical jobs are never deferred")
        return self


class SpillSpec(BaseModel):
    """Burst overflow: while more than ``after_lag`` of the lane's jobs wait (and the spill
    queue is the shorter wait), the router sends its new jobs to ``lanes.lane.<lane>.spill``,
    which the workers of the lanes that ``assists`` it serve ahead of their own jobs, and
    those of the lanes that ``backfills`` it when their own lane leaves the GPU idle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    after_lag: int = Field(ge=0)


class LaneSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    max_concurrency: int = Field(1, ge=1)
    sample_steps: int = Field(ge=1, le=200)
    guidance_scale: float = Field(0.0, ge=0.0)
    width: int = Field(512, ge=64, le=2048, multiple_of=8)
    height: int = Field(512, ge=64, le=2048, multiple_of=8)
    # Micro-batching: jobs that share model, size and steps render together.
    max_batch: int = Field(1, ge=1)
    max_wait_ms: float = Field(20.0, ge=0.0)
    # Where a job goes when this lane cannot serve it (out of memory): a fast-sample lane.
    fallback_lane: str | None = None
    # Refine lanes: img2img from the previous stage's image with this strength.
    refine_strength: float | None = Field(None, gt=0.0, le=1.0)
    cascade: CascadeSpec | None = None
    typography: TypographySpec = TypographySpec()
    admission: AdmissionSpec | None = None  # None: never defer on this lane
    spill: SpillSpec | None = None  # None: a burst waits in this lane's own queue
    # Lanes whose spill queues this lane's workers also serve: ahead of their own jobs
    # (assists: a more urgent lane), or only when their own jobs leave the GPU idle
    # (backfills: a less urgent lane; their own jobs run between its steps).
    assists: tuple[str, ...] = ()
    backfills: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _batch_within_cap(self) -> LaneSpec:
        if self.max_batch > self.max_concurrency:
            raise ValueError(
                f"max_batch ({self.max_batch}) cannot exceed "
                f"max_concurrency ({self.max_concurrency})"
            )
        return self


class Routes(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    models: dict[str, ModelSpec]
    lanes: dict[str, LaneSpec]
    intents: dict[str, str]

    @model_validator(mode="after")
    def _references(self) -> Routes:
        for name, lane in self.lanes.items():
            if lane.model not in self.models:
                raise ValueError(f"lane {name!r} names unknown model {lane.model!r}")
            for what, target in (
                ("falls back to", lane.fallback_lane),
                ("cascades to", lane.cascade.lane if lane.cascade else None),
                ("re-renders text failures on", lane.typography.fallback_lane),
            ):
                if target is not None and target not in self.lanes:
                    raise ValueError(f"lane {name!r} {what} unknown lane {target!r}")
            if lane.cascade and self.lanes[lane.cascade.lane].refine_strength is None:
                raise ValueError(
                    f"lane {name!r} cascades to {lane.cascade.lane!r}, which is not a "
                    "refine lane (set its refine_strength)"
                )
            for how, helped_lanes in (("assists", lane.assists), ("backfills", lane.backfills)):
                for helped in helped_lanes:
                    if helped == name or helped not in self.lanes:
                        raise ValueError(
                            f"lane {name!r} {how} {helped!r}, which is not another lane"
                        )
                    if self.lanes[helped].spill is None:
                        raise ValueError(
                            f"lane {name!r} {how} {helped!r}, which has no spill policy"
                        )
            if set(lane.assists) & set(lane.backfills):
                raise ValueError(
                    f"lane {name!r} both assists and backfills "
                    f"{sorted(set(lane.assists) & set(lane.backfills))}"
                )
        for name in self.spill_lanes:
            if not any(name in lane.assists + lane.backfills for lane in self.lanes.values()):
                raise ValueError(
                    f"lane {name!r} spills, but no lane assists or backfills it (add "
                    "it to another lane's 'assists' or 'backfills')"
                )
        for intent, lane in self.intents.items():
            if lane not in self.lanes:
                raise ValueError(f"intent {intent!r} routes to unknown lane {lane!r}")
        for intent in ("draft", "final"):
            if intent not in self.intents:
                raise ValueError(f"intent {intent!r} has no lane")
        return self

    @property
    def spill_lanes(self) -> list[str]:
        """Lanes with a spill queue, in name order."""
        return sorted(name for name, lane in self.lanes.items() if lane.spill is not None)

    def lane_for(self, intent: str) -> tuple[str, LaneSpec]:
        name = self.intents[intent]
        return name, self.lanes[name]


def routes_text(path: Path | None) -> str:
    """The routes file's text (the bundled default when ``path`` is None)."""
    if path is None:
        return resources.files("services.config").joinpath("default_routes.yaml").read_text()
    return Path(path).read_text()


def load_routes(path: Path | None) -> Routes:
    text = routes_text(path)
    base = Path.cwd() if path is None else Path(path).resolve().parent
    routes = Routes.model_validate(yaml.safe_load(text))
    # Relative checkpoint paths are relative to the routes file.
    models = {
        name: m.model_copy(update={"path": (base / m.path).resolve()}) if m.path else m
        for name, m in routes.models.items()
    }
    return routes.model_copy(update={"models": models})


def checkpoint_dir(name: str, spec: ModelSpec, models_root: Path) -> Path:
    """Where the model's diffusers checkpoint is; a tiny build is written there on first use."""
    if spec.path is not None:
        return spec.path
    assert spec.tiny is not None
    digest = hashlib.sha256(spec.tiny.model_dump_json().encode()).hexdigest()[:10]
    target = models_root / f"{name}-{spec.version}-{digest}"
    if not (target / "model_index.json").is_file():
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        build_tiny_checkpoint(partial, spec.tiny)
        try:
            partial.rename(target)
        except OSError:  # another process finished the same build first
            shutil.rmtree(partial, ignore_errors=True)
    return target
