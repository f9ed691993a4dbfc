"""Records that are not job events: the job view, dead letters, webhook deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import SCHEMA_VERSION, PartialImage, Timings, utcnow
from schemas.spec import GenerationSpec

__all__ = [
    "JobStatus",
    "Milestone",
    "TERMINAL",
    "Artifact",
    "Verification",
    "JobState",
    "Progress",
    "DeadLetter",
    "WebhookDelivery",
    "WebhookMessage",
]

JobStatus = Literal[
    "queued",
    "deferred",
    "routed",
    "running",
    "draft_ready",
    "upscaling",
    "verifying",
    "succeeded",
    "failed",
    "canceled",
]
# Moments a client can subscribe to with webhook_events (each delivered once).
Milestone = Literal["draft_ready", "upscaled", "verified", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class Artifact(BaseModel):
    stage: str  # draft | final | upscaled | repaired
    attempt: int = 1
    deliverable: bool = True  # False: an intermediate draft of a cascade
    uri: str
    width: int
    height: int
    model: str
    version: str
    instance: str | None = None  # the worker instance that rendered it
    provider: str | None = None  # diffusers, ideogram, gemini, imagen
    cost_usd: float | None = None  # what rendering it cost (the routes file's prices)


class Verification(BaseModel):
    expected: str
    read: str
    score: float
    passed: bool  # after repair, when one was made
    threshold: float
    artifact_uri: str  # the image that was checked (the repaired one after a repair)
    error: str | None = None
    attempt: int = 1
    # Before a repair: what the rendered image itself scored.
    rendered_uri: str | None = None
    rendered_read: str | None = None
    rendered_score: float | None = None
    repaired: bool = False
    rerouted_to: str | None = None  # another attempt follows on this lane


class Progress(BaseModel):
    """Where the job's render is: the last step a worker reported (and its preview)."""

    stage: str
    attempt: int = 1
    step: int
    steps: int
    at: datetime
    preview: str | None = None  # data:image/jpeg;base64,..., low resolution


class JobState(BaseModel):
    """One job as clients see it; the value on the compacted ``lanes.jobs`` topic."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    job_id: str
    status: JobStatus = "queued"
    # None until the request (or the router's copy of it) has been seen.
    spec: GenerationSpec | None = None
    expected_text: str | None = None
    fingerprint: str | None = None
    attempt: int = 1
    lane: str | None = None
    model: str | None = None
    version: str | None = None
    created_at: datetime | None = None
    started: bool = False
    cancel_requested: bool = False
    # Admission parked the job during a burst (until re-admitted to its lane).
    deferred_at: datetime | None = None
    deferred_until: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    timings: Timings | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    # The image the client gets, and the verification that chose it.
    delivered: Artifact | None = None
    verification: Verification | None = None
    verifications: list[Verification] = Field(default_factory=list)
    # True when no attempt passed the typography check: the best-scoring image is delivered.
    flagged: bool = False
    milestones: dict[str, datetime] = Field(default_factory=dict)
    error: str | None = None
    progress: Progress | None = None
    # The render's partial images (the spec's partial_images), of the current attempt.
    partials: list[PartialImage] = Field(default_factory=list, max_length=3)
    # Why it failed, in one word (safety, invalid, oom, provider_unavailable...).
    failure_reason: str | None = None
    # Every image rendered for the job (drafts, refine passes, re-renders), priced.
    cost_usd: float | None = None
    # Why the job left its first lane, one entry per reroute (e.g. out of memory).
    reroutes: list[str] = Field(default_factory=list)
    # Event ids already folded in, so a redelivered event changes nothing.
    seen_events: list[str] = Field(default_factory=list)
    # The job's trace (W3C trace id, 32 hex digits) when tracing is on: every hop's spans.
    trace_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def artifact_uris(self) -> list[str]:
        """Every image the job's record names (the store's URIs): what ``public`` maps."""
        uris = [a.uri for a in self.artifacts]
        uris += [u for v in self.verifications for u in (v.artifact_uri, v.rendered_uri) if u]
        return uris

    def public(self, base_url: str) -> dict[str, Any]:
        """The JSON clients get (GET /v1/generations/{id} and webhook bodies). Every image
        is named by a URL under ``base_url`` (the gateway as clients reach it), never by
        the store's internal URI."""
        data = self.model_dump(
            mode="json", exclude={"seen_events", "fingerprint", "spec", "started"}
        )
        data = _public_uris(data, artifact_url(base_url, self.job_id, ""))
        if self.spec is not None:
            data.update(
                prompt=self.spec.prompt,
                intent=self.spec.intent,
                tenant=self.spec.tenant,
                priority=self.spec.priority,
                metadata=self.spec.metadata,
                webhook_url=str(self.spec.webhook_url) if self.spec.webhook_url else None,
            )
        return dict(data)


class DeadLetter(BaseModel):
    """What ``lanes.dlq`` (contract) holds: the error and where the event came from."""

    error: str
    error_type: str
    consumer_group: str
    source_topic: str
    source_partition: int
    source_offset: int
    key_b64: str | None
    value_b64: str | None
    failed_at: datetime = Field(default_factory=utcnow)


class WebhookDelivery(BaseModel):
    """Outcome of one webhook message; compacted by ``<job_id>:<event>``."""

    job_id: str
    event: str
    webhook_id: str
    url: str
    outcome: Literal["delivered", "retrying", "failed"]
    status_code: int | None = None
    attempts: int
    error: str | None = None
    next_attempt_at: datetime | None = None
    at: datetime = Field(default_factory=utcnow)


class WebhookMessage(BaseModel):
    """A webhook still to send: on ``lanes.webhooks.retry`` (due at ``due_at``) and, after
    its last attempt, on ``lanes.webhooks.dlq`` (``lanes webhooks replay`` sends it again).
    Key: ``<job_id>:<event>``."""

    job_id: str
    event: str
    webhook_id: str  # the same on every attempt and replay: receivers deduplicate on it
    url: str
    body: str  # exactly what is signed and POSTed
    attempt: int = Field(ge=1)  # the attempt this record is for
    due_at: datetime = Field(default_factory=utcnow)
    last_status: int | None = None
    last_error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.job_id}:{self.event}"


URI_FIELDS = frozenset({"uri", "artifact_uri", "rendered_uri"})


def artifact_name(uri: str) -> str:
    """An artifact's name within its job: the last segment of its store URI."""
    return unquote(urlsplit(uri).path.rstrip("/").rsplit("/", 1)[-1])


def artifact_url(base_url: str, job_id: str, name: str) -> str:
    """Where a client downloads a job's artifact from the gateway."""
    return f"{base_url.rstrip('/')}/v1/generations/{quote(job_id)}/artifacts/{quote(name)}"


def _public_uris(value: Any, prefix: str) -> Any:
    if isinstance(value, dict):
        return {
            k: prefix + quote(artifact_name(v))
            if k in URI_FIELDS and isinstance(v, str)
            else _public_uris(v, prefix)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_public_uris(v, prefix) for v in value]
    return value
