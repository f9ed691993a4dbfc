"""The alerting rules in a real Prometheus (Debian's package) scraping a running stack's
control plane: a lane's only worker stops while jobs keep arriving, so the lane's lag grows
and no healthy worker serves it; both alerts go pending, and clear when the worker returns."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import start_http_server

from services.apps.alert_rules import render
from services.config.routes import load_routes
from services.config.settings import Settings
from services.kafka.local_broker import free_port
from tests.support import running_stack, wait_until, write_routes

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]
WATCHED = {"LanesLaneLagGrowing", "LanesLaneNoHealthyWorker"}


async def alerts(prom: httpx.AsyncClient) -> dict[str, str]:
    """The draft lane's watched alerts and their states (pending, firing)."""
    data = (await prom.get("/api/v1/alerts")).json()["data"]["alerts"]
    return {
        a["labels"]["alertname"]: a["state"]
        for a in data
        if a["labels"]["alertname"] in WATCHED and a["labels"].get("lane") == "draft"
    }


async def test_a_stopped_lane_worker_makes_lag_and_no_worker_alerts_go_pending_then_clear(
    settings: Settings, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (`make prometheus`)")
    routes = write_routes(tmp_path / "routes.yaml", draft={"sample_steps": 2, "width": 64,
                                                           "height": 64})  # fmt: skip
    rules = tmp_path / "alerts.yaml"
    rules.write_text(render(load_routes(routes)))
    async with running_stack(
        settings, routes_file=routes, worker_lanes=["draft"], heartbeat_s=0.5, worker_stale_s=3
    ) as stack:
        metrics_port, prom_port = free_port(), free_port()
        server, _ = start_http_server(
            metrics_port, addr="127.0.0.1", registry=stack.component_registry("control")
        )
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {
                            "job_name": "lanes-control",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                        }
                    ],
                }
            )
        )
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{prom_port}") as prom:

                async def up() -> bool:
                    try:
                        return (await prom.get("/-/ready")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await wait_until(up, timeout=60, what="prometheus ready")
                await stack.wait_workers_ready()
                first = await stack.submit({"prompt": "a kite", "intent": "draft"})
                await stack.wait_for_status(first, {"succeeded"})
                # A served lane is quiet (once the control plane has seen its heartbeats).
                await wait_until(lambda: _has(prom, set()), timeout=60, what="a quiet lane")

                stopped = asyncio.get_running_loop().time()
                await stack.stop_component("worker-draft")
                stack.workers.pop("draft", None)
                feeding = True

                async def feed() -> None:
                    while feeding:
                        await stack.submit({"prompt": "a boat", "intent": "draft"})
                        await asyncio.sleep(0.3)

                feeder = asyncio.create_task(feed())
                try:
                    await wait_until(
                        lambda: _has(prom, WATCHED), timeout=90, what="both alerts pending"
                    )
                    states = await alerts(prom)
                    pending_s = asyncio.get_running_loop().time() - stopped
                    assert set(states) == WATCHED
                    assert set(states.values()) <= {"pending", "firing"}
                finally:
                    feeding = False
                    await feeder
                back = asyncio.get_running_loop().time()
                stack.start_worker("draft")
                await stack.wait_workers_ready()
                await wait_until(lambda: _has(prom, set()), timeout=120, what="the alerts to clear")
                cleared_s = asyncio.get_running_loop().time() - back
                print(f"alerts {states} {pending_s:.1f}s after the stop; clear {cleared_s:.1f}s"
                      " after the worker returned")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            server.shutdown()


async def _has(prom: httpx.AsyncClient, names: set[str]) -> bool:
    return set(await alerts(prom)) == names
