"""One frozen settings object per process, read from ``LANES_*`` environment variables.

Built once in ``main()`` (or a test fixture) and passed down. Besides this class, only the
launchers read the environment: ``lanes up`` and the bench hand it on to the processes they
start, and the test session takes ``LANES_KAFKA_BOOTSTRAP`` from it. The SDK's
``producers.settings.ClientSettings`` (which this class extends) reads the same variables.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from producers.settings import ClientSettings
from schemas.topics import Groups, Partitions
from services.signing.control import (
    ControlSigner,
    ControlVerifier,
    dev_private_key,
    public_key_of,
)
from services.webhooks.delivery import SigningKeys

__all__ = [
    "Settings",
    "FLAT",
    "ClusterSettings",
    "StorageSettings",
    "GatewaySettings",
    "AuthSettings",
    "ProcessSettings",
    "WorkerSettings",
    "WebhookSettings",
    "ControlSettings",
    "AdmissionSettings",
    "Quota",
    "PLACEHOLDER_WEBHOOK_SECRET",
    "PLACEHOLDER_OPS_KEY",
    "PLACEHOLDER_URL_KEY",
]

# Dev-only secrets: accepted in the local profile, refused anywhere else.
PLACEHOLDER_WEBHOOK_SECRET = (
    "whsec_bGFuZXMtbG9jYWwtZGV2LW9ubHktc2VjcmV0"  # "lanes-local-dev-only-secret"
)
PLACEHOLDER_URL_KEY = "lanes-local-artifact-url-key-dev-only"
PLACEHOLDER_OPS_KEY = (
    "whsec_bGFuZXMtbG9jYWwtb3BzLWtleS1kZXYtb25seQ=="  # "lanes-local-ops-key-dev-only"
)


T = TypeVar("T")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list from one comma-separated variable (LANES_WEBHOOK_ALLOWED_HOSTS=a,b), or a list.
CsvList = Annotated[list[T], NoDecode, BeforeValidator(_split_csv)]


class Quota(BaseModel):
    rate_per_s: float = Field(gt=0)  # sustained requests per second
    burst: int = Field(ge=1)  # requests allowed at once


class ClusterSettings(BaseModel):
    """The server side of the Kafka connection: topics, groups, membership."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    allow_plaintext: bool = False
    """Production refuses PLAINTEXT and SASL_PLAINTEXT Kafka connections (credentials and every
    prompt in the clear) unless this says the network is trusted.
    """
    principals_file: Path | None = None
    """`lanes up` on a secured cluster: {principal: password} (what `lanes kafka start
    --secure` writes); each component then connects as its own principal, lanes-<name>.
    """
    group_prefix: str = ""
    """Consumer group ids are prefixed with this as well."""
    replication_factor: int = Field(1, ge=1)
    """Every topic Lanes creates: 1 on one local broker; 3 and 2 on a cluster (the Kubernetes
    manifests), so acks=all survives the loss of one broker.
    """
    min_insync_replicas: int = Field(1, ge=1)
    """min.insync.replicas of every topic Lanes creates (1 locally, 2 on a 3-broker cluster)."""
    topic_partitions: int = Field(6, ge=1, le=10000)
    """Partitions of the topics the CPU consumer groups share out (requests, deferred, renders,
    verifications, jobs, webhook deliveries): at least the most replicas any of those groups
    runs; a group never uses more members than its topic has partitions. Applied when a topic
    is created; `lanes kafka topics` raises it on a running cluster where Kafka allows.
    """
    lane_partitions: int = Field(6, ge=1, le=10000)
    """Partitions of each lane's topic (and its spill queue): at least the lane's most worker
    replicas (the chart refuses a KEDA maximum above it).
    """
    lane_partitions_by_lane: dict[str, int] = Field(default_factory=dict)
    """Per-lane exceptions to lane_partitions, JSON: {"draft": 32}."""

    def partitions(self) -> Partitions:
        return Partitions(
            self.topic_partitions,
            self.lane_partitions,
            tuple(sorted(self.lane_partitions_by_lane.items())),
        )

    session_timeout_ms: int = 30000
    """Consumer group session timeout: a member silent this long is replaced."""
    instance_id: str | None = Field(None, max_length=200)
    """A stable name for this process (the pod's name): its consumers join their groups as
    static members, so a restart under the same name reclaims its partitions without a
    rebalance. None: dynamic membership (a restart waits for the old session to expire).
    """


class StorageSettings(BaseModel):
    """Where state, images and models live, and for how long."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    state_dir: Path = Path(".lanes")
    """This process's own files (views of compacted topics, tiny model builds); never read by
    another host. Job history lives in Kafka and the artifact store, not here.
    """
    retention_days: float = Field(30.0, gt=0)
    """Finished jobs (their records and images) are deleted this long after they end."""
    retention_sweep_s: float = Field(60.0, gt=0)
    """how often the jobs consumer looks"""
    artifacts: str | None = None
    """Where artifacts are stored: s3://bucket[/prefix] (any S3-compatible store, with the s3_*
    settings below), or None for the local directory artifact_dir.
    """
    artifact_dir: Path | None = None
    """The local artifact directory when artifacts is unset (default: <state_dir>/artifacts);
    outside the local profile only a disk every host shares.
    """
    s3_endpoint_url: str | None = None
    """None: AWS; e.g. http://127.0.0.1:8333 (SeaweedFS)"""
    s3_region: str = "us-east-1"
    """The object store's region."""
    s3_access_key_id: SecretStr | None = None
    """None: boto3's own chain (env, profile, IAM)"""
    s3_secret_access_key: SecretStr | None = None
    """The object store's secret key (None: boto3's own chain)."""
    s3_max_attempts: int = Field(5, ge=1)
    """boto3 standard-mode retries per call"""
    outage_wait_s: float = Field(60.0, ge=0)
    """How long a worker or the verifier waits out an object store that does not answer
    (retrying with backoff, past boto3's own retries) before it fails the job with the
    reason. Nothing exits for it.
    """
    models_dir: Path | None = None
    """Where model checkpoints (and tiny random-weight builds, cached by config) live."""


class GatewaySettings(BaseModel):
    """The HTTP gateway, its console and the CLI's key."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """The address the gateway binds (0.0.0.0 in a container)."""
    port: int = 8000
    """The gateway's HTTP port."""
    publish_timeout_s: float = Field(10.0, gt=0)
    """How long the gateway waits for the broker's acks before answering 503 + Retry-After."""
    public_url: str | None = None
    """The gateway's URL as clients reach it (a load balancer's, in production): every image in
    a response or webhook is a URL under it. None: http://<gateway_host>:<gateway_port>.
    """
    console_enabled: bool = True
    """The web console at / (the gateway's): sign-in with an API key."""
    api_key: SecretStr | None = None
    """The API key `lanes submit` sends (None: the one `lanes up` saved in state_dir)."""
    openai_wait_s: float = Field(120.0, gt=0)
    """How long a call to the OpenAI-compatible `/v1/images/generations` (or `edits`) waits
    for its images before answering 504 with the job ids (the jobs go on; nothing is
    canceled); a stream ends with an error event then."""
    openai_image_max_bytes: int = Field(16 * 2**20, ge=1024)
    """The largest image (or mask) `/v1/images/edits` takes, in bytes (larger: 400)."""


class AuthSettings(BaseModel):
    """Signed image URLs and the throttle on failed sign-ins."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    url_key: SecretStr = SecretStr(PLACEHOLDER_URL_KEY)
    """Signs image URLs (HMAC-SHA256 over the path and an expiry) so that a browser, curl or a
    webhook receiver fetches them with no API key; previous keys still verify (rotation).
    The console's session cookies are signed with a key derived from it.
    """
    url_previous_keys: CsvList[SecretStr] = Field(default_factory=list)
    """Previous URL-signing keys, still accepted (comma-separated), for one TTL after a
    rotation.
    """
    url_ttl_s: float = Field(24 * 3600.0, gt=0)
    """How long a signed image URL stays valid (never past the job's retention)."""
    failure_burst: int = Field(20, ge=1)
    """Failed authentications per client address: this many at once, then this rate (429)."""
    failure_rate_per_s: float = Field(1.0, gt=0)
    """After auth_failure_burst failures, one more failed authentication per this many per
    second from one address; beyond it, 429.
    """
    unknown_key_wait_s: float = Field(2.0, ge=0)
    """A key id a gateway replica has not read from ``lanes.keys`` yet makes the request wait
    up to this long for the replica to read to the topic's end (a key minted a moment ago
    works at once); an unknown key is refused after it.
    """


class ProcessSettings(BaseModel):
    """Every process's logs and ops endpoints."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    metrics_host: str = "127.0.0.1"
    """The address each process's /metrics, /healthz and /readyz bind (0.0.0.0 in a pod)."""
    metrics_port: int = 0
    """The port of this process's /metrics, /healthz, /readyz (0: off)."""
    log_level: str = "INFO"
    """Log level (INFO, DEBUG...)."""
    log_json: bool = True
    """structlog JSON lines (true) or console-formatted logs."""
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    """The share of new traces recorded (a hop continues its parent's decision). Spans are
    exported over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) names a
    collector; otherwise tracing is off.
    """
    trace_ui_url: str | None = None
    """A trace UI's URL with {trace_id} in it (http://jaeger:16686/trace/{trace_id}): the
    console links each job to its trace.
    """


class WorkerSettings(BaseModel):
    """Lane workers and the verifier: devices, batching, draining, typography."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    device: str = "cpu"
    """Where a lane worker renders: cpu, cuda, cuda:1 ..."""
    memory_budget_gb: float | None = Field(None, gt=0)
    """GB of (GPU) memory one worker may use: models over it are refused at load, batches
    estimated over it are split. None: no budget.
    """
    compile_unet: bool = False
    """torch.compile the UNet on CUDA (opt-in: slow first batch)"""
    batch_calibration: bool = True
    """At each model load, time a batch of 1, 2, 4 ... max_batch and cap the version's batches
    where a bigger one stops paying (a CPU, or a GPU one image already fills).
    """
    assist: bool = True
    """A worker whose lane 'assists' other lanes (routes file) also serves their burst overflow
    (spill queues) on its GPU, ahead of its own jobs. False: this worker does not.
    """
    compute_thread_nice: int = Field(10, ge=0, le=19)
    """A worker's render and image-codec threads run this much nicer than its event loop
    (Linux), so on a saturated CPU the scheduler serves Kafka I/O, commits and heartbeats
    (and the broker, router) first; bulk work takes every cycle left.
    """
    gil_switch_interval_ms: float = Field(0.5, gt=0, le=100)
    """A worker renders on a thread beside its event loop; CPython hands the GIL over every
    this many ms, so it bounds how long a Python-heavy render step can hold back the loop's
    publishes, commits and heartbeats (CPython's default is 5 ms).
    """
    drain_timeout_s: float = 30.0
    """SIGTERM: how long a worker keeps finishing in-flight jobs before it exits."""
    progress_interval_s: float = Field(0.5, gt=0)
    """A rendering job's step goes out at most this often (first and last step always)."""
    recent_jobs_s: float = Field(6 * 3600.0, gt=0)
    """Lane workers remember jobs that changed this recently (dedupe, cancel checks)."""
    verify_threshold: float = Field(0.8, ge=0.0, le=1.0)
    """The typography score (0..1) a render must reach to pass verification."""
    font_path: str | None = None
    """TrueType font for typography repair; None: Pillow's bundled scalable font."""


class WebhookSettings(BaseModel):
    """Outbound webhooks: signing, targets, retries."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    secret: SecretStr = SecretStr(PLACEHOLDER_WEBHOOK_SECRET)
    """Signs webhooks (Standard Webhooks), whsec_<base64 key>; production refuses the
    placeholder.
    """
    previous_secrets: CsvList[SecretStr] = Field(default_factory=list)
    """Key rotation: these sign too (one more signature per delivery) until retired."""
    endpoint_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    """Per-endpoint secrets, JSON {"https://hooks.example.com": "whsec_..."} keyed by origin
    (scheme://host[:port]); an endpoint's own secret replaces the global one.
    """
    allowed_hosts: CsvList[str] = Field(default_factory=list)
    """Hosts webhooks may go to although they resolve to private or loopback addresses
    (comma-separated).
    """
    timeout_s: float = 15.0
    """Seconds one webhook POST may take."""
    max_attempts: int = Field(8, ge=1)
    """Attempts per webhook before it goes to lanes.webhooks.dlq."""
    backoff_s: float = Field(5.0, gt=0)
    """first retry after ~this, doubling"""
    max_delay_s: float = Field(3600.0, gt=0)
    """longest wait, Retry-After included"""
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    """The largest webhook body sent."""


class ControlSettings(BaseModel):
    """The control plane: signed ops and control records, canaries, autoscaling."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    ops_key: SecretStr = SecretStr(PLACEHOLDER_OPS_KEY)
    """Signs ops commands (Standard Webhooks scheme), whsec_<base64 key>."""
    signing_key: SecretStr | None = None
    """lanes.control records: the control plane signs with this Ed25519 private key (base64,
    `lanes keys control-keypair`; only the control plane's pod gets it), every follower
    verifies with these public keys (several during a rotation). Local: a fixed dev pair.
    """
    verify_keys: CsvList[str] = Field(default_factory=list)
    """The control plane's Ed25519 public keys (base64, comma-separated) that lanes.control
    records must be signed with; several during a rotation.
    """
    canary_min_jobs: int = Field(10, ge=1)
    """Canary judgement: after this many canary outcomes, roll back when the canary's render
    failure rate or verification failure rate exceeds the stable version's by the margin.
    """
    canary_margin: float = Field(0.2, ge=0.0, le=1.0)
    """How much worse (failure or verification rate) a canary may be than stable before it is
    rolled back.
    """
    heartbeat_s: float = Field(2.0, gt=0)
    """lane workers' status on lanes.workers"""
    worker_stale_s: float = Field(10.0, gt=0)
    """a worker silent this long is not counted"""
    autoscale_drain_s: float = Field(60.0, gt=0)
    """Autoscaling signal: replicas a lane needs to drain its lag within this many seconds."""
    autoscale_max_replicas: int = Field(16, ge=1)
    """The most replicas the autoscaling signal asks for per lane."""


class AdmissionSettings(BaseModel):
    """Admission: tenants' quotas and how often lane lag is read."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    poll_s: float = Field(1.0, gt=0)
    """how often lane lag is read for admission"""
    tenant_quotas: dict[str, Quota] = Field(default_factory=dict)
    """Admission: JSON {"tenant": {"rate_per_s": 2, "burst": 10}}; tenants not named (and
    requests without a tenant) get default_quota each; None: unlimited.
    """
    default_quota: Quota | None = None
    """The quota of tenants not named in tenant_quotas (JSON {rate_per_s, burst}); None:
    unlimited.
    """


# Each grouped setting's environment name (LANES_<flat name>) and its place: the names every
# deployment already uses keep working, and so do the flat attribute and keyword names
# (deprecated as attributes).
FLAT: dict[str, tuple[str, str]] = {
    "kafka_allow_plaintext": ("cluster", "allow_plaintext"),
    "kafka_principals_file": ("cluster", "principals_file"),
    "group_prefix": ("cluster", "group_prefix"),
    "topic_replication_factor": ("cluster", "replication_factor"),
    "topic_min_insync_replicas": ("cluster", "min_insync_replicas"),
    "kafka_session_timeout_ms": ("cluster", "session_timeout_ms"),
    "topic_partitions": ("cluster", "topic_partitions"),
    "lane_partitions": ("cluster", "lane_partitions"),
    "lane_partitions_by_lane": ("cluster", "lane_partitions_by_lane"),
    "instance_id": ("cluster", "instance_id"),
    "state_dir": ("storage", "state_dir"),
    "retention_days": ("storage", "retention_days"),
    "retention_sweep_s": ("storage", "retention_sweep_s"),
    "artifacts": ("storage", "artifacts"),
    "artifact_dir": ("storage", "artifact_dir"),
    "s3_endpoint_url": ("storage", "s3_endpoint_url"),
    "s3_region": ("storage", "s3_region"),
    "s3_access_key_id": ("storage", "s3_access_key_id"),
    "s3_secret_access_key": ("storage", "s3_secret_access_key"),
    "s3_max_attempts": ("storage", "s3_max_attempts"),
    "store_outage_wait_s": ("storage", "outage_wait_s"),
    "models_dir": ("storage", "models_dir"),
    "gateway_host": ("gateway", "host"),
    "gateway_port": ("gateway", "port"),
    "publish_timeout_s": ("gateway", "publish_timeout_s"),
    "public_url": ("gateway", "public_url"),
    "console_enabled": ("gateway", "console_enabled"),
    "api_key": ("gateway", "api_key"),
    "openai_wait_s": ("gateway", "openai_wait_s"),
    "openai_image_max_bytes": ("gateway", "openai_image_max_bytes"),
    "artifact_url_key": ("auth", "url_key"),
    "artifact_url_previous_keys": ("auth", "url_previous_keys"),
    "artifact_url_ttl_s": ("auth", "url_ttl_s"),
    "auth_failure_burst": ("auth", "failure_burst"),
    "auth_failure_rate_per_s": ("auth", "failure_rate_per_s"),
    "auth_unknown_key_wait_s": ("auth", "unknown_key_wait_s"),
    "metrics_host": ("process", "metrics_host"),
    "trace_sample_ratio": ("process", "trace_sample_ratio"),
    "trace_ui_url": ("process", "trace_ui_url"),
    "metrics_port": ("process", "metrics_port"),
    "log_level": ("process", "log_level"),
    "log_json": ("process", "log_json"),
    "device": ("worker", "device"),
    "memory_budget_gb": ("worker", "memory_budget_gb"),
    "compile_unet": ("worker", "compile_unet"),
    "batch_calibration": ("worker", "batch_calibration"),
    "assist": ("worker", "assist"),
    "compute_thread_nice": ("worker", "compute_thread_nice"),
    "gil_switch_interval_ms": ("worker", "gil_switch_interval_ms"),
    "drain_timeout_s": ("worker", "drain_timeout_s"),
    "progress_interval_s": ("worker", "progress_interval_s"),
    "worker_recent_jobs_s": ("worker", "recent_jobs_s"),
    "verify_threshold": ("worker", "verify_threshold"),
    "font_path": ("worker", "font_path"),
    "webhook_secret": ("webhooks", "secret"),
    "webhook_previous_secrets": ("webhooks", "previous_secrets"),
    "webhook_endpoint_secrets": ("webhooks", "endpoint_secrets"),
    "webhook_allowed_hosts": ("webhooks", "allowed_hosts"),
    "webhook_timeout_s": ("webhooks", "timeout_s"),
    "webhook_max_attempts": ("webhooks", "max_attempts"),
    "webhook_backoff_s": ("webhooks", "backoff_s"),
    "webhook_max_delay_s": ("webhooks", "max_delay_s"),
    "webhook_max_body_bytes": ("webhooks", "max_body_bytes"),
    "ops_key": ("control", "ops_key"),
    "control_signing_key": ("control", "signing_key"),
    "control_verify_keys": ("control", "verify_keys"),
    "canary_min_jobs": ("control", "canary_min_jobs"),
    "canary_margin": ("control", "canary_margin"),
    "heartbeat_s": ("control", "heartbeat_s"),
    "worker_stale_s": ("control", "worker_stale_s"),
    "autoscale_drain_s": ("control", "autoscale_drain_s"),
    "autoscale_max_replicas": ("control", "autoscale_max_replicas"),
    "admission_poll_s": ("admission", "poll_s"),
    "tenant_quotas": ("admission", "tenant_quotas"),
    "default_quota": ("admission", "default_quota"),
}
_JSON = frozenset(
    {"tenant_quotas", "default_quota", "webhook_endpoint_secrets", "lane_partitions_by_lane"}
)


class FlatEnvSource(PydanticBaseSettingsSource):
    """``LANES_<flat name>`` variables into their groups (JSON for the mappings; lists stay
    comma-separated strings for the fields' own validators)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, Any]] = {}
        for name, (group, field) in FLAT.items():
            raw = os.environ.get(f"LANES_{name.upper()}")
            if raw is None:
                continue
            out.setdefault(group, {})[field] = json.loads(raw) if name in _JSON else raw
        return out


class Settings(ClientSettings):
    model_config = SettingsConfigDict(
        env_prefix="LANES_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    profile: Literal["local", "production"] = "local"
    """local (one machine, development keys allowed) or production (every secret and the object
    store required).
    """
    routes_file: Path | None = None
    """The routes file: models, lanes, intents (None: the tiny default routes)."""
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    """The server side of the Kafka connection: topics, groups, membership."""
    storage: StorageSettings = Field(default_factory=StorageSettings)
    """Where state, images and models live, and for how long."""
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    """The HTTP gateway, its console and the CLI's key."""
    auth: AuthSettings = Field(default_factory=AuthSettings)
    """Signed image URLs and the throttle on failed sign-ins."""
    process: ProcessSettings = Field(default_factory=ProcessSettings)
    """Every process's logs and ops endpoints."""
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    """Lane workers and the verifier: devices, batching, draining, typography."""
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    """Outbound webhooks: signing, targets, retries."""
    control: ControlSettings = Field(default_factory=ControlSettings)
    """The control plane: signed ops and control records, canaries, autoscaling."""
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    """Admission: tenants' quotas and how often lane lag is read."""

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """``Settings(gateway_port=8001)`` and every flat name of before the groups still
        work: each is moved into its group (``gateway.port``)."""
        if not isinstance(data, dict):
            return data
        out = {k: v for k, v in data.items() if k not in FLAT}
        for name, value in data.items():
            if name in FLAT:
                group, field = FLAT[name]
                target = out.setdefault(group, {})
                if isinstance(target, BaseModel):
                    target = out[group] = target.model_dump()
                target[field] = value
        return out

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, FlatEnvSource(settings_cls), env_settings)

    def __getattr__(self, name: str) -> Any:
        """Deprecated: the flat name of a grouped setting (``settings.gateway_port``)."""
        if name in FLAT:
            group, field = FLAT[name]
            warnings.warn(
                f"Settings.{name} is Settings.{group}.{field}", DeprecationWarning, stacklevel=2
            )
            return getattr(getattr(self, group), field)
        return super().__getattr__(name)  # type: ignore[misc]

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy with ``update`` applied; flat names update their group."""
        if not update:
            return super().model_copy(deep=deep)
        top: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for name, value in update.items():
            if name in FLAT:
                group, field = FLAT[name]
                groups.setdefault(group, {})[field] = value
            else:
                top[name] = value
        for group, fields in groups.items():
            current = top.get(group, getattr(self, group))
            top[group] = current.model_copy(update=fields)
        return super().model_copy(update=top, deep=deep)

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        c, w, a, st = self.cluster, self.webhooks, self.auth, self.storage
        if c.min_insync_replicas > c.replication_factor:
            raise ValueError(
                "LANES_TOPIC_MIN_INSYNC_REPLICAS must not exceed LANES_TOPIC_REPLICATION_FACTOR"
            )
        if self.profile != "local":
            if "kafka_bootstrap" not in self.model_fields_set:
                raise ValueError(
                    "LANES_KAFKA_BOOTSTRAP must name the cluster outside the local profile "
                    "(host:port,...; its default is this machine's loopback)"
                )
            if self.kafka_security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and not (
                c.allow_plaintext
            ):
                raise ValueError(
                    f"LANES_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} sends "
                    "credentials and prompts in the clear: use SSL or SASL_SSL outside the "
                    "local profile, or set LANES_KAFKA_ALLOW_PLAINTEXT=true on a trusted network"
                )
            if not self.control.verify_keys:
                raise ValueError(
                    "LANES_CONTROL_VERIFY_KEYS must be set outside the local profile "
                    "(the control plane's public key: `lanes keys control-keypair`)"
                )
            if w.secret.get_secret_value() == PLACEHOLDER_WEBHOOK_SECRET:
                raise ValueError("LANES_WEBHOOK_SECRET must be set outside the local profile")
            if self.control.ops_key.get_secret_value() == PLACEHOLDER_OPS_KEY:
                raise ValueError("LANES_OPS_KEY must be set outside the local profile")
            if a.url_key.get_secret_value() == PLACEHOLDER_URL_KEY:
                raise ValueError("LANES_ARTIFACT_URL_KEY must be set outside the local profile")
            if len(a.url_key.get_secret_value()) < 32:
                raise ValueError("LANES_ARTIFACT_URL_KEY must be at least 32 characters")
            if st.artifacts is None and st.artifact_dir is None:
                raise ValueError(
                    "LANES_ARTIFACTS (s3://bucket/prefix) must be set outside the local profile, "
                    "or LANES_ARTIFACT_DIR to a disk every host shares: a pod's own disk "
                    "loses its images"
                )
        for name, secret in [
            ("LANES_WEBHOOK_SECRET", w.secret),
            *(("LANES_WEBHOOK_PREVIOUS_SECRETS", s) for s in w.previous_secrets),
            *((f"LANES_WEBHOOK_ENDPOINT_SECRETS[{k}]", s) for k, s in w.endpoint_secrets.items()),
        ]:
            if not secret.get_secret_value().startswith("whsec_"):
                raise ValueError(f"{name} must be in whsec_<base64> form")
        if not self.control.ops_key.get_secret_value().startswith("whsec_"):
            raise ValueError("LANES_OPS_KEY must be in whsec_<base64> form")
        return self

    def control_signer(self) -> ControlSigner:
        """The control plane's signer (the dev key in the local profile only)."""
        if self.control.signing_key is None:
            if self.profile != "local":
                raise ValueError("LANES_CONTROL_SIGNING_KEY must be set for the control plane")
            return ControlSigner(dev_private_key())
        return ControlSigner(self.control.signing_key.get_secret_value())

    def control_verifier(self) -> ControlVerifier:
        keys = self.control.verify_keys or [public_key_of(dev_private_key())]
        return ControlVerifier(keys)

    def provider_key(self, env_name: str) -> SecretStr | None:
        """A hosted model's API key: the variable its routes entry names in ``api_key_env``
        (read when the engine loads; a SecretStr, so it never prints)."""
        value = os.environ.get(env_name)
        return SecretStr(value) if value else None

    def signing_keys(self) -> SigningKeys:
        return SigningKeys(
            current=self.webhooks.secret.get_secret_value(),
            previous=tuple(s.get_secret_value() for s in self.webhooks.previous_secrets),
            endpoints={
                k.lower().rstrip("/"): v.get_secret_value()
                for k, v in self.webhooks.endpoint_secrets.items()
            },
        )

    @property
    def public_base_url(self) -> str:
        gw = self.gateway
        return (gw.public_url or f"http://{gw.host}:{gw.port}").rstrip("/")

    @property
    def artifacts_path(self) -> Path:
        return (self.storage.artifact_dir or self.storage.state_dir / "artifacts").resolve()

    @property
    def models_path(self) -> Path:
        return (self.storage.models_dir or self.storage.state_dir / "models").resolve()

    def view_path(self, name: str) -> Path:
        """This process's SQLite view ``name`` of a compacted topic, under state_dir."""
        prefix = self.topic_prefix.strip(".") or "lanes"
        return (self.storage.state_dir / "views" / f"{prefix}.{name}.sqlite").resolve()

    @property
    def groups(self) -> Groups:
        """Every consumer-group id, under ``group_prefix``."""
        return Groups(self.cluster.group_prefix)
