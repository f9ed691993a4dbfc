"""Trace context in record headers: a well-formed traceparent continues its trace; a
malformed or missing one starts a new trace (the record is processed as usual), derived
from the job id so that every hop of the same job joins it."""

from __future__ import annotations

from opentelemetry import trace

from producers.tracing import context_from_headers, trace_headers

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def span_context(headers: list[tuple[str, bytes]] | None, job_id: str | None = None):  # type: ignore[no-untyped-def]
    return trace.get_current_span(context_from_headers(headers, job_id)).get_span_context()


def test_a_valid_traceparent_is_continued() -> None:
    ctx = span_context([("traceparent", PARENT.encode())], "job_1")
    assert format(ctx.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert ctx.is_remote and ctx.trace_flags.sampled


def test_a_malformed_traceparent_starts_the_jobs_own_trace() -> None:
    for bad in (
        b"garbage",
        b"00-zz-yy-01",
        b"\xff\xfe",
        b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",
    ):
        ctx = span_context([("traceparent", bad)], "job_1")
        assert ctx.is_valid and ctx.trace_id == span_context(None, "job_1").trace_id
    assert span_context(None, "job_1").trace_id != span_context(None, "job_2").trace_id
    assert not span_context(None, "job_1").trace_flags.sampled  # decided by the ratio
    assert not span_context([("traceparent", b"garbage")]).is_valid  # no job: no trace


def test_without_a_tracer_nothing_is_written() -> None:
    assert trace_headers() == ()
