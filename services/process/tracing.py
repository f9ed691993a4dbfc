"""OpenTelemetry tracing for a process: spans exported over OTLP (HTTP/protobuf) to the
collector the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT`` variables
name, sampled at ``LANES_TRACE_SAMPLE_RATIO`` (a hop follows its parent's decision). With no
collector named, nothing is configured and every span is a no-op.

Exporting never blocks or fails the job path: spans queue in memory (bounded; the oldest
are dropped when it is full) and a background thread sends them in batches, with a short
timeout, dropping what a dead collector does not take.
"""

from __future__ import annotations

import os

from opentelemetry import trace

__all__ = ["configure_tracing", "tracer", "tracing_enabled"]

_configured: list[object] = []


def tracing_enabled() -> bool:
    return (
        bool(
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"
    )


def configure_tracing(service: str, ratio: float = 1.0, instance: str | None = None) -> bool:
    """Install the process's tracer provider (once): spans from ``service``, ``ratio`` of new
    traces sampled (``LANES_TRACE_SAMPLE_RATIO``). False when tracing is off."""
    if _configured:
        return True
    if not tracing_enabled():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": service, "service.instance.id": instance or ""})
    provider = TracerProvider(
        resource=resource,
        # A hop under a remote parent that was not sampled (a job's derived trace, see
        # producers/tracing.py) decides from the trace id, as the root would have.
        sampler=ParentBased(
            TraceIdRatioBased(ratio), remote_parent_not_sampled=TraceIdRatioBased(ratio)
        ),
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(timeout=5),
            max_queue_size=8192,
            schedule_delay_millis=500,
            export_timeout_millis=5000,
        )
    )
    trace.set_tracer_provider(provider)
    _configured.append(provider)
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer("lanes")
