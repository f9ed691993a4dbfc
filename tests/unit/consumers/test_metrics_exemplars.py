"""A latency histogram's exemplar (a job's trace id) reaches a scraper that asks for
OpenMetrics, so a slow bucket leads to a trace; the plain text format stays as it was."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from consumers.lane_worker.metrics import WorkerMetrics
from services.process.ops_server import ops_routes

TRACE = "0af7651916cd43dd8448eb211c80319c"


def test_end_to_end_latency_carries_the_trace_id_as_an_exemplar() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.end_to_end.labels("draft", "tiny-sd", "v1").observe(1.7, {"trace_id": TRACE})
    app = FastAPI()
    ops_routes(app, registry, lambda: True)
    client = TestClient(app)
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    (line,) = [
        line
        for line in om.text.splitlines()
        if line.startswith("lanes_worker_end_to_end_seconds_bucket") and 'le="2.0"' in line
    ]
    assert f'# {{trace_id="{TRACE}"}} 1.7' in line
    plain = client.get("/metrics").text
    assert "lanes_worker_end_to_end_seconds_bucket" in plain and TRACE not in plain
