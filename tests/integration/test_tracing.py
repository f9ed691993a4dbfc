"""One trace per job across every hop, read back from a real trace backend (Jaeger v2, built
from its Go module): the gateway's request span is the root; routing, the final lane's
worker (queue wait, GPU turn, render with its denoising steps, store and publish), the
cascade's upscale pass, verification, the job fold and the webhook attempt (with its status
code) all continue it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace

from services.config.settings import Settings
from services.kafka.local_broker import free_port
from services.process.local_jaeger import JaegerProcess, jaeger_binary
from services.process.tracing import configure_tracing
from tests.support import WebhookReceiver, running_stack, sign_in, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def jaeger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JaegerProcess]:
    if not jaeger_binary().is_file():
        pytest.skip("Jaeger not built (`make jaeger`)")
    backend = JaegerProcess(tmp_path / "jaeger", free_port(), free_port(), free_port())
    backend.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", backend.otlp_endpoint)
    assert configure_tracing("lanes-test", 1.0)
    provider: Any = trace.get_tracer_provider()
    try:
        yield backend
    finally:
        provider.shutdown()  # later tests' spans go nowhere
        backend.stop()


def rows(found: dict[str, Any]) -> list[dict[str, Any]]:
    """The trace's spans: name, id, parent id, start (µs), duration (µs), tags."""
    out = []
    for span in found["spans"]:
        parents = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
        out.append(
            {
                "name": span["operationName"],
                "id": span["spanID"],
                "parent": parents[0] if parents else None,
                "start": span["startTime"],
                "duration": span["duration"],
                "tags": {t["key"]: t["value"] for t in span.get("tags", [])},
                "events": [
                    {f["key"]: f["value"] for f in log["fields"]} for log in span.get("logs", [])
                ],
            }
        )
    return sorted(out, key=lambda r: r["start"])


async def test_a_final_job_is_one_trace_across_every_hop(
    settings: Settings, jaeger: JaegerProcess, receiver: WebhookReceiver
) -> None:
    ui = "http://traces.example/trace/{trace_id}"
    async with running_stack(settings, worker_lanes=["final", "upscale"], trace_ui_url=ui) as stack:
        await stack.wait_workers_ready()
        job_id = await stack.submit(
            {"prompt": 'a poster "SALE"', "intent": "final", "webhook_url": receiver.url}
        )
        await receiver.wait_for(1, timeout=120)
        job = await stack.wait_for_status(job_id, {"succeeded"})
        trace_id = job["trace_id"]
        assert trace_id and len(trace_id) == 32
        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
        wanted = {
            "lanes-worker-upscale job",
            "webhook attempt",
            "lanes-jobs verification.completed",
        }

        def complete() -> bool:
            found = jaeger.trace(trace_id)
            names = {s["operationName"] for s in (found or {}).get("spans", [])}
            return wanted <= names

        try:
            await wait_until(complete, timeout=30, what="the job's spans in Jaeger")
        except AssertionError:
            seen = jaeger.trace(trace_id) or {}
            got = sorted({s["operationName"] for s in seen.get("spans", [])})
            raise AssertionError(f"trace {trace_id} in Jaeger has only {got}") from None
        found = jaeger.trace(trace_id)
        assert found is not None
        # The console's job page shows the trace id, linked to the trace UI.
        admin = await stack.new_key("ops", ["admin"])
        async with httpx.AsyncClient(base_url=str(stack.http.base_url)) as web:
            await sign_in(web, admin)
            page = (await web.get(f"/jobs/{job_id}")).text
        assert f'href="http://traces.example/trace/{trace_id}"' in page
    spans = rows(found)
    names = [s["name"] for s in spans]
    ids = {s["id"] for s in spans}
    # One root, the gateway's request; every other span's parent is in the trace.
    roots = [s for s in spans if s["parent"] is None]
    assert [r["name"] for r in roots] == ["POST /v1/generations"], roots
    assert all(s["parent"] in ids for s in spans if s["parent"] is not None)
    for hop in (
        "lanes-router generation.requested",
        "lanes-worker-final job",
        "queue wait",
        "gpu turn wait",
        "render",
        "store and publish",
        "lanes-worker-upscale job",
        "lanes-verify render.completed",
        "lanes-jobs generation.requested",
        "lanes-jobs render.completed",
        "lanes-jobs verification.completed",
        "lanes-webhooks jobs",
        "webhook attempt",
    ):
        assert hop in names, f"{hop} missing from {sorted(set(names))}"
    final = next(s for s in spans if s["name"] == "lanes-worker-final job")
    assert final["tags"]["lanes.job_id"] == job_id and final["tags"]["lanes.lane"] == "final"
    assert any(e.get("event") == "denoising step" for e in final["events"])
    attempt = next(s for s in spans if s["name"] == "webhook attempt")
    assert attempt["tags"]["http.response.status_code"] == 204
    # Nothing secret on a span: no prompt, no key, no webhook path.
    dump = json.dumps(found)
    assert "SALE" not in dump and "/hooks" not in dump and "Bearer" not in dump
    # The spans cover the job end to end: from the request to the fold of its outcome.
    start = roots[0]["start"]
    fold_end = max(s["start"] + s["duration"] for s in spans if s["name"].startswith("lanes-jobs"))
    traced_s = (fold_end - start) / 1e6
    total_s = job["timings"]["total_ms"] / 1000
    table = [
        (s["name"], f"{(s['start'] - start) / 1000:.1f}", f"{s['duration'] / 1000:.1f}")
        for s in spans
    ]
    print("trace", trace_id, json.dumps(table), f"traced {traced_s:.3f}s total {total_s:.3f}s")
    assert traced_s >= total_s * 0.9
