"""Prometheus metrics of a lane worker, labelled by lane, model and version, declared as
data: each is a ``Metric`` (kind, name, help, extra labels, buckets) made in the process's
registry when the worker starts."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.config.slo import LATENCY_BUCKETS

__all__ = ["WorkerMetrics", "Metric", "LATENCY_BUCKETS"]

LABELS = ("lane", "model", "version")
M = TypeVar("M", Counter, Gauge, Histogram)


class Metric(Generic[M]):
    """One metric's declaration; on an instance of the class that declares it, the metric."""

    def __init__(
        self,
        kind: type[M],
        name: str,
        documentation: str,
        *extra_labels: str,
        buckets: tuple[float, ...] | None = None,
    ) -> None:
        self.kind: type[M] = kind
        self.name, self.documentation = name, documentation
        self.labels = LABELS + extra_labels
        self.buckets = buckets
        self.attr = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    @overload
    def __get__(self, obj: None, owner: type) -> Metric[M]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> M: ...
    def __get__(self, obj: object | None, owner: type) -> Metric[M] | M:
        return self if obj is None else obj.__dict__[self.attr]

    def make(self, registry: CollectorRegistry) -> M:
        extra: dict[str, Any] = {} if self.buckets is None else {"buckets": self.buckets}
        return self.kind(self.name, self.documentation, self.labels, registry=registry, **extra)


class WorkerMetrics:
    jobs = Metric(Counter, "lanes_worker_jobs_total", "Jobs finished by outcome", "outcome")
    failures = Metric(Counter, "lanes_worker_failures_total", "Jobs that did not render", "reason")
    inference = Metric(
        Histogram,
        "lanes_worker_inference_seconds",
        "Pipeline time per batch",
        buckets=LATENCY_BUCKETS,
    )
    queue_wait = Metric(
        Histogram,
        "lanes_worker_queue_wait_seconds",
        "Accepted until its batch started",
        buckets=LATENCY_BUCKETS,
    )
    end_to_end = Metric(
        Histogram,
        "lanes_worker_end_to_end_seconds",
        "Accepted until the render was published",
        buckets=LATENCY_BUCKETS,
    )
    batch_size = Metric(
        Histogram,
        "lanes_worker_batch_size",
        "Jobs per pipeline call",
        buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
    )
    in_flight = Metric(Gauge, "lanes_worker_in_flight", "Jobs held by this worker")
    in_flight_max = Metric(
        Gauge, "lanes_worker_in_flight_max", "Most jobs ever held at once by this worker"
    )
    capacity = Metric(Gauge, "lanes_worker_max_concurrency", "The lane's per-GPU cap")
    pauses = Metric(
        Counter,
        "lanes_worker_partition_pauses_total",
        "Times fetching paused because the worker was full",
    )
    resumes = Metric(
        Counter,
        "lanes_worker_partition_resumes_total",
        "Times fetching resumed after a slot freed",
    )
    peak_memory = Metric(
        Gauge,
        "lanes_worker_peak_memory_bytes",
        "Peak GPU memory (CUDA) or resident memory (CPU)",
        "device",
    )
    ooms = Metric(
        Counter, "lanes_worker_oom_total", "Out-of-memory events (CUDA OOM or budget refusal)"
    )
    lag = Metric(
        Gauge, "lanes_worker_consumer_lag", "Records on assigned partitions not yet fetched"
    )
    batch_cap = Metric(
        Gauge,
        "lanes_worker_batch_cap",
        "Largest batch this version renders (max_batch, or less where the "
        "start-up profile showed batching does not pay)",
    )
    batch_seconds_per_image = Metric(
        Gauge,
        "lanes_worker_batch_seconds_per_image",
        "Start-up profile: seconds per image at each batch size",
        "batch",
    )
    cost = Metric(
        Counter,
        "lanes_worker_cost_usd_total",
        "Cost of the images rendered (the routes file's price table)",
    )
    images = Metric(Counter, "lanes_worker_images_total", "Images rendered and stored")
    provider_calls = Metric(
        Counter,
        "lanes_worker_provider_calls_total",
        "Hosted engines' provider answers by outcome (ok, throttled, safety, "
        "unavailable, provider_failed, invalid, expired_url...)",
        "outcome",
    )
    provider_paused = Metric(
        Gauge,
        "lanes_worker_provider_paused",
        "1 while a hosted engine sends no calls (throttled, or the provider refuses)",
    )
    duplicates = Metric(
        Counter,
        "lanes_worker_duplicates_skipped_total",
        "Redelivered jobs that were already rendered",
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        for attr, declared in vars(type(self)).items():
            if isinstance(declared, Metric):
                self.__dict__[attr] = declared.make(registry)
