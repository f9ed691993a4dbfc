"""Prometheus metrics of a lane worker, labelled by lane, model and version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.config.slo import LATENCY_BUCKETS

__all__ = ["WorkerMetrics", "LATENCY_BUCKETS"]

LABELS = ["lane", "model", "version"]


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.jobs = Counter(
            "lanes_worker_jobs_total", "Jobs finished by outcome", LABELS + ["outcome"], registry=r
        )
        self.failures = Counter(
            "lanes_worker_failures_total",
            "Jobs that did not render",
            LABELS + ["reason"],
            registry=r,
        )
        self.inference = Histogram(
            "lanes_worker_inference_seconds",
            "Pipeline time per batch",
            LABELS,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.queue_wait = Histogram(
            "lanes_worker_queue_wait_seconds",
            "Accepted until its batch started",
            LABELS,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.end_to_end = Histogram(
            "lanes_worker_end_to_end_seconds",
            "Accepted until the render was published",
            LABELS,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "lanes_worker_batch_size",
            "Jobs per pipeline call",
            LABELS,
            registry=r,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
        )
        self.in_flight = Gauge(
            "lanes_worker_in_flight", "Jobs held by this worker", LABELS, registry=r
        )
        self.in_flight_max = Gauge(
            "lanes_worker_in_flight_max",
            "Most jobs ever held at once by this worker",
            LABELS,
            registry=r,
        )
        self.capacity = Gauge(
            "lanes_worker_max_concurrency", "The lane's per-GPU cap", LABELS, registry=r
        )
        self.pauses = Counter(
            "lanes_worker_partition_pauses_total",
            "Times fetching paused because the worker was full",
            LABELS,
            registry=r,
        )
        self.resumes = Counter(
            "lanes_worker_partition_resumes_total",
            "Times fetching resumed after a slot freed",
            LABELS,
            registry=r,
        )
        self.peak_memory = Gauge(
            "lanes_worker_peak_memory_bytes",
            "Peak GPU memory (CUDA) or resident memory (CPU)",
            LABELS + ["device"],
            registry=r,
        )
        self.ooms = Counter(
            "lanes_worker_oom_total",
            "Out-of-memory events (CUDA OOM or budget refusal)",
            LABELS,
            registry=r,
        )
        self.lag = Gauge(
            "lanes_worker_consumer_lag",
            "Records on assigned partitions not yet fetched",
            LABELS,
            registry=r,
        )
        self.batch_cap = Gauge(
            "lanes_worker_batch_cap",
            "Largest batch this version renders (max_batch, or less where the "
            "start-up profile showed batching does not pay)",
            LABELS,
            registry=r,
        )
        self.batch_seconds_per_image = Gauge(
            "lanes_worker_batch_seconds_per_image",
            "Start-up profile: seconds per image at each batch size",
            LABELS + ["batch"],
            registry=r,
        )
        self.cost = Counter(
            "lanes_worker_cost_usd_total",
            "Cost of the images rendered (the routes file's price table)",
            LABELS,
            registry=r,
        )
        self.images = Counter(
            "lanes_worker_images_total", "Images rendered and stored", LABELS, registry=r
        )
        self.provider_calls = Counter(
            "lanes_worker_provider_calls_total",
            "Hosted engines' provider answers by outcome (ok, throttled, safety, "
            "unavailable, provider_failed, invalid, expired_url...)",
            LABELS + ["outcome"],
            registry=r,
        )
        self.provider_paused = Gauge(
            "lanes_worker_provider_paused",
            "1 while a hosted engine sends no calls (throttled, or the provider refuses)",
            LABELS,
            registry=r,
        )
        self.duplicates = Counter(
            "lanes_worker_duplicates_skipped_total",
            "Redelivered jobs that were already rendered",
            LABELS,
            registry=r,
        )
