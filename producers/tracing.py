"""W3C trace context in Kafka record headers (``traceparent``, ``tracestate``): each hop
continues the job's trace from the record it handles. OpenTelemetry's API only (no SDK, no
exporter): with no tracer configured these write and read nothing, so the SDK stays light.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from opentelemetry import propagate, trace
from opentelemetry.context import Context

__all__ = ["trace_headers", "headers_of_span", "context_from_headers", "trace_id_of"]

Headers = tuple[tuple[str, bytes], ...]


def trace_headers(context: Context | None = None) -> Headers:
    """The current (or given) trace context as record headers; () when there is none."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return tuple((k, v.encode()) for k, v in carrier.items())


def headers_of_span(span: trace.Span) -> Headers:
    return trace_headers(trace.set_span_in_context(span))


def context_from_headers(
    headers: Iterable[tuple[str, bytes]] | None, job_id: str | None = None
) -> Context:
    """The trace context a record carries. A missing or malformed ``traceparent`` starts a
    new trace (the record is processed as usual): one derived from ``job_id`` when given, so
    that every hop of a job published without a trace (the SDK with no tracer) still joins
    one trace, under a parent that no span records; its sampling is decided from the trace
    id (the same at every hop)."""
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        try:
            carrier[key] = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            continue
    context = propagate.extract(carrier)
    if job_id is None or trace.get_current_span(context).get_span_context().is_valid:
        return context
    digest = hashlib.sha256(job_id.encode()).hexdigest()
    parent = trace.SpanContext(
        trace_id=int(digest[:32], 16) or 1,
        span_id=int(digest[32:48], 16) or 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def trace_id_of(span: trace.Span) -> str | None:
    """The span's trace id as 32 hex digits (what trace UIs search by); None unsampled."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
