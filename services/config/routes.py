"""The routes file: models, lanes and which lane serves each intent."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.spec import GenerationSpec, Priority
from services.config.slo import SloSpec
from services.engines.tiny import TinyConfig, build_tiny_checkpoint

__all__ = [
    "Provider",
    "HOSTED_IN_FLIGHT",
    "ModelSpec",
    "AliasSpec",
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


Provider = Literal["diffusers", "ideogram", "gemini", "imagen"]
# A hosted lane's default cap (calls in flight per worker): the provider's limit where it
# states one (Ideogram: about 10 images in flight per organisation).
HOSTED_IN_FLIGHT: dict[str, int] = {"ideogram": 10, "gemini": 8, "imagen": 8}
# Providers whose engines can run a cascade's refine pass (an image in, an image out).
REFINE_PROVIDERS = {"diffusers", "gemini"}
# Providers whose refine engines take a mask (inpainting).
INPAINT_PROVIDERS = {"diffusers"}
_ENV_NAME = r"[A-Z_][A-Z0-9_]*"


class ModelSpec(BaseModel):
    """A model: a local diffusers checkpoint (``path`` or ``tiny``), or a hosted engine
    (``provider`` ideogram, gemini or imagen, with ``model_id``, ``base_url`` and
    ``api_key_env``, the name of the variable that holds its key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Provider = "diffusers"
    version: str  # hosted: defaults to model_id
    path: Path | None = None  # a local diffusers checkpoint directory
    tiny: TinyConfig | None = None  # or a tiny random-weight build from config
    model_id: str | None = Field(None, min_length=1, max_length=200)
    base_url: str | None = Field(None, pattern=r"^https?://[^/\s]+(/[^\s]*)?$")
    api_key_env: str | None = Field(None, pattern=f"^{_ENV_NAME}$")
    # Hosts (besides base_url's) that serve the provider's output URLs: downloads go nowhere else.
    download_hosts: tuple[str, ...] = ()
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    price_usd: float | None = Field(None, ge=0)  # per image; hosted default: the list price
    gpu_usd_per_hour: float | None = Field(None, ge=0)  # local: cost from GPU time
    timeout_s: float = Field(90.0, gt=0, le=600)
    max_retries: int = Field(2, ge=0, le=5)  # 5xx, timeouts, expired URLs
    probe_s: float = Field(60.0, gt=0)  # a refusing provider (401/402/403) is retried after
    max_in_flight: int | None = Field(None, ge=1, le=256)

    @model_validator(mode="before")
    @classmethod
    def _hosted_version(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("provider", "diffusers") != "diffusers":
            if "version" not in data and data.get("model_id"):
                data = {**data, "version": str(data["model_id"])}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if not self.hosted:
            if (self.path is None) == (self.tiny is None):
                raise ValueError("a model needs exactly one of 'path' (checkpoint dir) or 'tiny'")
            for name in ("model_id", "base_url", "api_key_env"):
                if getattr(self, name) is not None:
                    raise ValueError(f"'{name}' is for hosted models (set 'provider')")
            return self
        if self.path is not None or self.tiny is not None:
            raise ValueError(f"a {self.provider} model takes no 'path' or 'tiny'")
        for name in ("model_id", "base_url", "api_key_env"):
            if getattr(self, name) is None:
                raise ValueError(f"a {self.provider} model must name '{name}'")
        if self.gpu_usd_per_hour is not None:
            raise ValueError("'gpu_usd_per_hour' is for local models; hosted ones take price_usd")
        return self

    @property
    def hosted(self) -> bool:
        return self.provider != "diffusers"


class AliasSpec(BaseModel):
    """A retired model's name kept working: it is served by ``alias_of`` (with a warning
    in the worker's log and in ``lanes ops status``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alias_of: str
    note: str | None = Field(None, max_length=300)


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
    max_concurrency: int = Field(1, ge=1)  # hosted: calls in flight (provider's limit)
    sample_steps: int = Field(ge=1, le=200)  # hosted lanes: unused, 1
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
    # A provider's safety block: the job fails with reason "safety" ("fail"), or is
    # rendered again on the fallback lane ("fallback").
    on_safety: Literal["fail", "fallback"] = "fail"
    # Live progress: a low-resolution preview (from the latents) every this many steps.
    preview_every: int | None = Field(None, ge=1)
    # Its objectives: the alerting rules' burn rates (`lanes alerts rules`) come from these.
    slo: SloSpec = SloSpec()

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
    # Retired names (from ``models:`` entries with ``alias_of``) and the lanes that name one.
    aliases: dict[str, AliasSpec] = Field(default_factory=dict)
    lane_aliases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _aliases_and_defaults(cls, data: Any) -> Any:
        """Split ``alias_of`` entries out of ``models``, point lanes naming one at its
        target, and give hosted lanes their defaults (cap: the provider's in-flight limit;
        steps: 1)."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            return data
        models = dict(data["models"])
        aliases = dict(data.get("aliases") or {})
        for name, spec in list(models.items()):
            if isinstance(spec, dict) and "alias_of" in spec:
                aliases[name] = models.pop(name)
        for name, alias in aliases.items():
            target = alias.get("alias_of") if isinstance(alias, dict) else alias.alias_of
            if target not in models:
                raise ValueError(f"model {name!r} is an alias of {target!r}, which is not a model")
        lanes = {}
        lane_aliases = dict(data.get("lane_aliases") or {})
        for lane_name, lane in (data.get("lanes") or {}).items():
            if isinstance(lane, dict):
                lane = dict(lane)
                if lane.get("model") in aliases:
                    alias = aliases[lane["model"]]
                    lane_aliases[lane_name] = lane["model"]
                    lane["model"] = alias["alias_of"] if isinstance(alias, dict) else alias.alias_of
                spec = models.get(lane.get("model"))
                provider = (
                    spec.get("provider", "diffusers")
                    if isinstance(spec, dict)
                    else getattr(spec, "provider", "diffusers")
                )
                if provider != "diffusers":
                    cap = (
                        spec.get("max_in_flight")
                        if isinstance(spec, dict)
                        else getattr(spec, "max_in_flight", None)
                    )
                    lane.setdefault("max_concurrency", cap or HOSTED_IN_FLIGHT[provider])
                    lane.setdefault("sample_steps", 1)
            lanes[lane_name] = lane
        return {
            **data,
            "models": models,
            "aliases": aliases,
            "lanes": lanes,
            "lane_aliases": lane_aliases,
        }

    def resolve_model(self, name: str) -> tuple[str, str | None]:
        """The model a name means, and a warning when it is a retired alias."""
        alias = self.aliases.get(name)
        if alias is None:
            return name, None
        note = f" ({alias.note})" if alias.note else ""
        return alias.alias_of, f"model {name!r} is retired: served by {alias.alias_of!r}{note}"

    def notices(self, lane: str) -> list[str]:
        """Warnings about what ``lane`` runs (a retired model name)."""
        if lane not in self.lane_aliases:
            return []
        return [f"lane {lane!r}: {self.resolve_model(self.lane_aliases[lane])[1]}"]

    @model_validator(mode="after")
    def _references(self) -> Routes:
        for name, lane in self.lanes.items():
            if lane.model not in self.models:
                raise ValueError(f"lane {name!r} names unknown model {lane.model!r}")
            provider = self.models[lane.model].provider
            if lane.refine_strength is not None and provider not in REFINE_PROVIDERS:
                raise ValueError(
                    f"lane {name!r} is a refine lane on a {provider} model, which cannot "
                    f"refine an image (refine engines: {sorted(REFINE_PROVIDERS)})"
                )
            if lane.on_safety == "fallback" and lane.fallback_lane is None:
                raise ValueError(f"lane {name!r} sends safety blocks to a fallback it lacks")
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
        for intent, target in self.intents.items():
            if target not in self.lanes:
                raise ValueError(f"intent {intent!r} routes to unknown lane {target!r}")
        for intent in ("draft", "final"):
            if intent not in self.intents:
                raise ValueError(f"intent {intent!r} has no lane")
        unknown = set(self.intents) - {"preview", "draft", "final", "edit"}
        if unknown:
            raise ValueError(f"unknown intents {sorted(unknown)} (preview, draft, final, edit)")
        edit = self.intents.get("edit")
        if edit is not None and self.lanes[edit].refine_strength is None:
            raise ValueError(f"intent 'edit' routes to {edit!r}, which does not refine (set its "
                             "refine_strength)")  # fmt: skip
        return self

    @property
    def spill_lanes(self) -> list[str]:
        """Lanes with a spill queue, in name order."""
        return sorted(name for name, lane in self.lanes.items() if lane.spill is not None)

    def lane_for(self, intent: str) -> tuple[str, LaneSpec]:
        """The intent's lane; previews ride the draft lane unless the file routes them."""
        name = self.intents.get(intent) or self.intents["draft"]
        return name, self.lanes[name]

    @property
    def edit_lane(self) -> str | None:
        """Where edits (an uploaded image, img2img) render: the ``edit`` intent's lane, else
        the first refine lane (one with ``refine_strength``); None: no lane can."""
        if "edit" in self.intents:
            return self.intents["edit"]
        return next((n for n, lane in self.lanes.items() if lane.refine_strength), None)

    def inpaints(self, lane: str) -> bool:
        """Whether the lane's engine takes a mask (an edit's inpainting)."""
        return self.models[self.lanes[lane].model].provider in INPAINT_PROVIDERS

    def lane_of(self, spec: GenerationSpec) -> tuple[str, LaneSpec]:
        """The lane a request goes to: the edit lane for an edit, else its intent's."""
        if spec.edit is not None and self.edit_lane is not None:
            return self.edit_lane, self.lanes[self.edit_lane]
        return self.lane_for(spec.intent)


def routes_text(path: Path | None) -> str:
    """The routes file's text (the bundled default when ``path`` is None)."""
    if path is None:
        return resources.files("services.config").joinpath("default_routes.yaml").read_text()
    return Path(path).read_text()


_VAR = re.compile(r"\$\{(" + _ENV_NAME + r")(?::-([^}]*))?\}")


def expand_env(text: str, environ: dict[str, str] | None = None) -> str:
    """``${NAME}`` and ``${NAME:-default}`` in a routes file, from the environment (a
    provider's base URL per deployment, e.g. a regional endpoint or a test server)."""
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        value = env.get(m.group(1)) or m.group(2)
        if value is None:
            raise ValueError(f"the routes file uses ${{{m.group(1)}}}, which is not set")
        return value

    return _VAR.sub(sub, text)


def load_routes(path: Path | None) -> Routes:
    text = expand_env(routes_text(path))
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
