"""The one routing rule: every ``generation.routed`` event is built here.

Whoever sends a job to a lane (the router, the deferred re-admitter, a cascade's refine
pass, the out-of-memory fallback, the canary's retry on stable, the typography rerender)
calls ``route(job, lane, reason)``. The target lane decides how the job renders:

- model and version: the lane's current stable version on ``lanes.control`` (what its
  workers serve now), else the routes file's;
- sample steps: the lane's current override on ``lanes.control``, else the routes file's;
- guidance and refine strength: the lane's spec;
- size: the size the client asked for, else the target lane's; a cascade's refine pass
  takes the cascade's target size (``size=``). A typography rerender follows the same rule:
  the rerender lane renders at its own size, and its cascade (if any) brings the image to
  the delivered size, as the intent's lane did;
- an edit (the gateway's upload) on a refine lane starts from its image, with its mask;
- seed: the job's (the client's, else one derived from the job id), so a retry of the same
  job draws the same image; a rerender passes another one on purpose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from schemas.control import LaneDesired, ModelRef
from schemas.events import GenerationRouted
from schemas.spec import GenerationSpec
from services.config.routes import Routes

__all__ = ["Job", "route", "seed_for"]


def seed_for(job_id: str) -> int:
    """A stable seed per job, so a re-render of the same job draws the same image."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")


@dataclass(frozen=True)
class Job:
    """What routing needs to know of a job, whichever event it comes from."""

    job_id: str
    spec: GenerationSpec
    requested_at: datetime
    attempt: int = 1
    seed: int | None = None  # None: the client's seed, else seed_for(job_id)

    @property
    def render_seed(self) -> int:
        if self.seed is not None:
            return self.seed
        return self.spec.seed if self.spec.seed is not None else seed_for(self.job_id)

    @classmethod
    def of(cls, event: GenerationRouted, **changes: object) -> Job:
        """The job of a routed event (its attempt and seed), with ``changes``."""
        fields: dict[str, object] = dict(
            job_id=event.job_id,
            spec=event.spec,
            requested_at=event.requested_at,
            attempt=event.attempt,
            seed=event.seed,
        )
        fields.update(changes)
        return cls(**fields)  # type: ignore[arg-type]


def route(
    routes: Routes,
    control: Mapping[str, LaneDesired],
    job: Job,
    lane: str,
    reason: str | None = None,
    *,
    producer: str,
    size: tuple[int, int] | None = None,
    init_artifact_uri: str | None = None,
    stable_only: bool = False,
) -> GenerationRouted:
    """The routed event that sends ``job`` to ``lane`` (see the module doc for the rule)."""
    spec = routes.lanes[lane]
    desired = control.get(lane)
    stable = (
        desired.stable
        if desired is not None
        else ModelRef(model=spec.model, version=routes.models[spec.model].version)
    )
    steps = (desired.sample_steps if desired is not None else None) or spec.sample_steps
    width, height = size or (job.spec.width or spec.width, job.spec.height or spec.height)
    mask = None
    edit = job.spec.edit
    if edit is not None and spec.refine_strength and init_artifact_uri in (None, edit.image_uri):
        init_artifact_uri, mask = edit.image_uri, edit.mask_uri  # an edit starts from its upload
    return GenerationRouted(
        job_id=job.job_id,
        producer=producer,
        spec=job.spec,
        attempt=job.attempt,
        lane=lane,
        model=stable.model,
        version=stable.version,
        sample_steps=steps,
        guidance_scale=spec.guidance_scale,
        width=width,
        height=height,
        seed=job.render_seed,
        requested_at=job.requested_at,
        reason=reason,
        init_artifact_uri=init_artifact_uri,
        strength=spec.refine_strength if init_artifact_uri is not None else None,
        mask_artifact_uri=mask,
        stable_only=stable_only,
    )
