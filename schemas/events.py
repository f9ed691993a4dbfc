"""Kafka event payloads: a common envelope plus one model per event type.

Transport metadata (topic, partition, offset) never goes into a payload; see
``consumers.machinery.loop.MessageContext``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.spec import GenerationSpec

__all__ = [
    "Envelope",
    "GenerationRequested",
    "GenerationRouted",
    "RenderStarted",
    "RenderCompleted",
    "RenderFailed",
    "RenderRerouted",
    "VerificationCompleted",
    "CancelRequested",
    "GenerationDeferred",
    "RenderCanceled",
    "RenderProgress",
    "PartialImage",
    "Timings",
    "JobEvent",
    "JOB_EVENT",
    "parse_job_event",
    "SCHEMA_VERSION",
    "utcnow",
]

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """Fields every job event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    schema_version: int = SCHEMA_VERSION
    job_id: str = Field(min_length=1, max_length=64)
    occurred_at: datetime = Field(default_factory=utcnow)
    producer: str = "lanes"

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class GenerationRequested(Envelope):
    """Published by the gateway or the SDK to ``lanes.requests`` (contract)."""

    type: Literal["generation.requested"] = "generation.requested"
    spec: GenerationSpec
    attempt: int = Field(1, ge=1)
    # sha256 of the canonical request body; an Idempotency-Key reused with another body is refused.
    fingerprint: str | None = None


class GenerationRouted(Envelope):
    """The router's decision, published to ``lanes.lane.<lane>``."""

    type: Literal["generation.routed"] = "generation.routed"
    spec: GenerationSpec
    attempt: int = 1
    lane: str
    model: str
    version: str
    sample_steps: int = Field(ge=1)
    guidance_scale: float = Field(ge=0.0)
    width: int
    height: int
    seed: int
    requested_at: datetime
    # Why the job is on this lane when it is not the intent's lane (e.g. a fallback).
    reason: str | None = None
    # Refine/upscale lanes: the image to start from and how far to move away from it.
    init_artifact_uri: str | None = None
    strength: float | None = Field(None, gt=0.0, le=1.0)
    # An edit's mask (white: where the image may change): the lane inpaints.
    mask_artifact_uri: str | None = None
    # A retry after the lane's canary version failed this job: render on the stable one.
    stable_only: bool = False


class Timings(BaseModel):
    model_config = ConfigDict(frozen=True)

    queue_wait_ms: float  # accepted -> its batch started on the GPU
    inference_ms: float  # wall time of the batch it was rendered in
    total_ms: float  # accepted -> render stored and published
    kafka_wait_ms: float | None = None  # accepted -> fetched by the worker
    store_ms: float | None = None  # writing the artifact
    batch_size: int = 1
    # Paused between denoising steps while a more urgent lane's batch used the GPU.
    preempted_ms: float | None = None


class RenderStarted(Envelope):
    type: Literal["render.started"] = "render.started"
    lane: str
    model: str
    version: str
    instance: str
    attempt: int = 1


class RenderCompleted(Envelope):
    type: Literal["render.completed"] = "render.completed"
    stage: Literal["draft", "final", "upscaled"]
    lane: str
    model: str
    version: str
    provider: str = "diffusers"  # diffusers (local) or the hosted engine's provider
    cost_usd: float | None = None  # from the routes file's price table; None: no price
    instance: str
    artifact_uri: str
    width: int
    height: int
    seed: int
    sample_steps: int
    expected_text: str | None = None
    timings: Timings
    attempt: int = 1
    # "upscale": an intermediate draft; the delivered image comes from the cascade's next pass.
    next_stage: Literal["upscale"] | None = None
    # What the job asked for, so later stages (verification, fallback) can re-route it.
    spec: GenerationSpec | None = None
    requested_at: datetime | None = None

    @property
    def deliverable(self) -> bool:
        return self.next_stage is None


class RenderRerouted(Envelope):
    """The job could not be served on ``lane`` (e.g. out of memory) and went to ``to_lane``."""

    type: Literal["render.rerouted"] = "render.rerouted"
    lane: str
    to_lane: str
    reason: str
    attempt: int  # the new attempt, on to_lane
    # The version that could not serve the job (canary judgement counts it as a failure).
    model: str | None = None
    version: str | None = None


class RenderFailed(Envelope):
    type: Literal["render.failed"] = "render.failed"
    lane: str
    # The version that failed, when one was chosen (canary judgement counts it).
    model: str | None = None
    version: str | None = None
    error: str
    # Why, in one word: safety, invalid, oom, provider_unavailable, provider_failed,
    # no_image, store, artifact, error. None from producers before 0.2.
    reason: str | None = None
    retriable: bool = False
    attempt: int = 1


class VerificationCompleted(Envelope):
    type: Literal["verification.completed"] = "verification.completed"
    artifact_uri: str
    # The lane and version that rendered the checked image (canary judgement counts it).
    lane: str | None = None
    model: str | None = None
    version: str | None = None
    expected: str
    read: str
    score: float = Field(ge=0.0, le=1.0)
    passed: bool
    threshold: float
    ocr_ms: float
    # Set when the artifact could not be read at all (the check then counts as failed).
    error: str | None = None
    attempt: int = 1
    # A repair composited the expected text onto the image and verified it again.
    repaired_uri: str | None = None
    repaired_read: str | None = None
    repaired_score: float | None = Field(None, ge=0.0, le=1.0)
    repair_error: str | None = None
    # Set when the job goes on to another attempt on this lane; otherwise checking is done.
    rerouted_to: str | None = None

    @property
    def final_passed(self) -> bool:
        return self.passed or (
            self.repaired_score is not None and self.repaired_score >= self.threshold
        )


class GenerationDeferred(Envelope):
    """Admission parked a non-critical job during a burst, on ``lanes.deferred``; it is
    re-admitted to ``lane`` at ``not_before`` if the lane's lag has fallen (else parked again)."""

    type: Literal["generation.deferred"] = "generation.deferred"
    spec: GenerationSpec
    lane: str
    attempt: int = 1
    requested_at: datetime
    not_before: datetime
    deferrals: int = Field(1, ge=1)  # how many times it has been parked
    reason: str


class CancelRequested(Envelope):
    """``DELETE /v1/generations/{id}``, on ``lanes.requests`` (key = job id, so it follows
    the request). A job not rendering is canceled at once; a render stops at its next step."""

    type: Literal["generation.cancel_requested"] = "generation.cancel_requested"
    reason: str | None = Field(None, max_length=500)


class RenderCanceled(Envelope):
    """A worker dropped a canceled job: before rendering it, or at a step boundary."""

    type: Literal["render.canceled"] = "render.canceled"
    lane: str
    attempt: int = 1
    at_step: int | None = None  # None: it never started


class PartialImage(BaseModel):
    """A full-size decode of a render in progress (a job's ``partial_images``), stored under
    the job's prefix in the artifact store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, le=2)  # 0-based, in step order
    step: int = Field(ge=1)
    uri: str = Field(min_length=1, max_length=1000)
    width: int
    height: int


class RenderProgress(Envelope):
    """A render's denoising step, a few times a second per job (the worker throttles it),
    with a low-resolution preview every ``preview_every`` steps where the lane asks."""

    type: Literal["render.progress"] = "render.progress"
    lane: str
    attempt: int = 1
    stage: Literal["draft", "final", "upscaled"]
    step: int = Field(ge=0)
    steps: int = Field(ge=1)
    # data:image/jpeg;base64,... (at most 64 px on a side): self-contained, no server path.
    preview: str | None = Field(None, max_length=32_000)
    # Where the job asked for partial images: the one decoded at this step.
    partial: PartialImage | None = None


JobEvent = Annotated[
    GenerationRequested
    | GenerationRouted
    | RenderStarted
    | RenderCompleted
    | RenderFailed
    | RenderRerouted
    | VerificationCompleted
    | CancelRequested
    | RenderCanceled
    | RenderProgress
    | GenerationDeferred,
    Field(discriminator="type"),
]
JOB_EVENT: TypeAdapter[Any] = TypeAdapter(JobEvent)


def parse_job_event(raw: bytes) -> Any:
    """Parse any job event; raises pydantic.ValidationError on malformed or unknown input."""
    return JOB_EVENT.validate_json(raw)
