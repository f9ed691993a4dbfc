"""The OpenAI-compatible call against Lanes' own API, on the same stack and the same jobs:
one synchronous ``POST /v1/images/generations`` (the image in the answer) against
``POST /v1/generations`` then polling ``GET /v1/generations/{id}`` (every 0.1 s and every
0.5 s, as clients do) and downloading the image. Rounds interleave the arms so each meets
the same machine; each round's jobs have the same prompt, seed and size. Writes
openai-latency.md (table) and openai-latency.png (latency per round) into the results
folder.

    lanes bench openai --out results/
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.apps.bench.stats import ensure_dir, markdown_table, pct

__all__ = ["OpenAILatencyConfig", "run_openai_latency"]


@dataclass(frozen=True)
class OpenAILatencyConfig:
    rounds: int = 20
    intent: str = "draft"
    polls_s: tuple[float, ...] = (0.1, 0.5)


Arm = Callable[[httpx.AsyncClient, dict[str, Any]], Awaitable[bytes]]


async def _sync_call(http: httpx.AsyncClient, job: dict[str, Any]) -> bytes:
    body = {"prompt": job["prompt"], "model": f"lanes-{job['intent']}", "seed": job["seed"]}
    resp = await http.post("/v1/images/generations", json=body)
    resp.raise_for_status()
    return base64.b64decode(resp.json()["data"][0]["b64_json"])


def _polling(every_s: float) -> Arm:
    async def call(http: httpx.AsyncClient, job: dict[str, Any]) -> bytes:
        resp = await http.post("/v1/generations", json=job)
        resp.raise_for_status()
        link = resp.json()["links"]["self"]
        while True:
            state = (await http.get(link)).json()
            if state["status"] in ("succeeded", "failed", "canceled"):
                break
            await asyncio.sleep(every_s)
        assert state["status"] == "succeeded", state
        image = await http.get(state["delivered"]["uri"])
        image.raise_for_status()
        return image.content

    return call


async def _measure(cfg: OpenAILatencyConfig, base_url: str, key: str) -> dict[str, list[float]]:
    arms: dict[str, Arm] = {"OpenAI sync call": _sync_call}
    arms |= {f"/v1/generations, poll {p:g} s": _polling(p) for p in cfg.polls_s}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
        await _sync_call(http, {"prompt": "warm up", "intent": cfg.intent, "seed": 0})
        for i in range(cfg.rounds):
            job = {"prompt": f"a ceramic mug, round {i}", "intent": cfg.intent, "seed": i}
            order = list(arms.items())
            order = order[i % len(order) :] + order[: i % len(order)]  # rotate who goes first
            for name, arm in order:
                started = time.perf_counter()
                png = await arm(http, job)
                seconds[name].append(time.perf_counter() - started)
                assert png[:4] == b"\x89PNG", name
    return seconds


async def _run(cfg: OpenAILatencyConfig, workdir: Path) -> dict[str, list[float]]:
    import uvicorn

    from services.apps.bench.models import bench_settings
    from services.apps.gateway import create_app
    from services.apps.in_process import LocalStack
    from services.auth.key_admin import create_key
    from services.config.routes import load_routes
    from services.config.settings import Settings
    from services.kafka.local_broker import free_port, local_kafka
    from services.process.ops_server import EmbeddedServer

    with local_kafka(Settings(), workdir) as bootstrap:
        settings = bench_settings(
            bootstrap,
            workdir,
            artifact_dir=workdir / "artifacts",
            gateway_port=free_port(),
            batch_calibration=False,
        )
        lane = load_routes(settings.routes_file).lane_for(cfg.intent)[0]
        stack = LocalStack(settings, components=["router", "jobs"], worker_lanes=[lane])
        await stack.start()
        server = EmbeddedServer(
            uvicorn.Config(
                create_app(settings),
                host="127.0.0.1",
                port=settings.gateway.port,
                log_level="warning",
            )
        )
        served = asyncio.create_task(server.serve())
        try:
            await stack.wait_workers_ready(timeout=300)
            key, _ = await create_key(settings, "bench", ["generations:read", "generations:write"])
            base = f"http://127.0.0.1:{settings.gateway.port}"
            async with httpx.AsyncClient(base_url=base) as probe:
                while (await probe.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.2)
            return await _measure(cfg, base, key)
        finally:
            server.should_exit = True
            await served
            await stack.stop()


def _plot(seconds: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in seconds.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=name)
    ax.set(xlabel="round (the same job in each arm)", ylabel="request to image bytes (s)")
    ax.set_title("OpenAI-compatible sync call vs /v1/generations with polling")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_openai_latency(cfg: OpenAILatencyConfig, out_dir: Path) -> Path:
    out_dir = ensure_dir(out_dir)
    with tempfile.TemporaryDirectory(prefix="lanes-bench-") as tmp:
        seconds = asyncio.run(_run(cfg, Path(tmp)))
    base = seconds["OpenAI sync call"]
    rows: list[list[object]] = [
        [
            name,
            len(values),
            pct(values, 50) * 1000,
            pct(values, 95) * 1000,
            sum(values) / len(values) * 1000,
            pct(values, 50) / pct(base, 50),
        ]
        for name, values in seconds.items()
    ]
    table = markdown_table(["arm", "jobs", "p50 ms", "p95 ms", "mean ms", "p50 × sync call"], rows)
    _plot(seconds, out_dir / "openai-latency.png")
    path = out_dir / "openai-latency.md"
    path.write_text(
        f"# OpenAI-compatible call vs /v1/generations with polling ({cfg.intent}, "
        f"{cfg.rounds} rounds, interleaved)\n\nRequest to image bytes in hand, same stack, "
        f"same jobs.\n\n{table}\n\n![latency per round](openai-latency.png)\n"
    )
    return path
