"""The Lanes arm of the burst benchmark: router and workers as processes over Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, cast

from producers.kafka import make_raw_consumer
from services.apps.bench.burst_plan import BurstConfig, JobResult
from services.apps.bench.models import preset_config
from services.apps.registry import child_env, consumer, workers

__all__ = ["run_lanes", "routes_yaml"]


def routes_yaml(cfg: BurstConfig) -> str:
    import yaml

    model: dict[str, Any] = {"version": "bench-v1"}
    model["tiny"] = preset_config(cfg.preset).model_dump(mode="json")
    lane = {"model": "m", "width": cfg.width, "height": cfg.height, "max_wait_ms": cfg.max_wait_ms}
    draft = {
        **lane,
        "sample_steps": cfg.draft_steps,
        "guidance_scale": 0.0,
        "max_concurrency": cfg.draft_cap,
        "max_batch": cfg.draft_batch,
    }
    final = {
        **lane,
        "sample_steps": cfg.final_steps,
        "guidance_scale": cfg.final_guidance,
        "max_concurrency": cfg.final_cap,
        "max_batch": cfg.final_batch,
    }
    if cfg.spill_after_lag is not None:
        draft["spill"] = {"after_lag": cfg.spill_after_lag}
        final["assists"] = ["draft"]
    if cfg.final_spill_after_lag is not None:
        final["spill"] = {"after_lag": cfg.final_spill_after_lag}
        draft["backfills"] = ["final"]
    return yaml.safe_dump(
        {
            "models": {"m": model},
            "lanes": {"draft": draft, "final": final},
            "intents": {"draft": "draft", "final": "final"},
        }
    )


# ---- one architecture, in its own process ---------------------------------------------


async def run_lanes(
    settings: Any, cfg: BurstConfig, plan: list[tuple[float, str]]
) -> dict[str, Any]:
    """The router and each worker in its own process, as `make up` runs them (the fleet split
    ``draft_workers`` / the rest); this process only submits and reads the outcomes back."""
    import httpx

    from producers.client import GenerationClient
    from schemas.events import GenerationRouted, RenderCompleted, parse_job_event
    from schemas.spec import GenerationSpec
    from schemas.topics import Topics
    from services.config.routes import load_routes
    from services.kafka.clients import ensure_topics
    from services.kafka.local_broker import free_port
    from services.process.tuning import freeze_startup_heap

    topics = Topics(settings.topic_prefix)
    routes = load_routes(settings.routes_file)
    await ensure_topics(settings, topics.specs(routes.lanes, routes.spill_lanes))
    commands = {"router": list(consumer("router").run_args)}
    by_lane = {w.lane: w for w in workers(routes)}
    for lane, n in (("draft", cfg.draft_workers), ("final", cfg.workers - cfg.draft_workers)):
        for i in range(n):
            run = [*by_lane[lane].run_args, "--instance", f"bench-{lane}-{i}"]
            commands[f"{lane}-{i}"] = run
    ports = {name: free_port() for name in commands}
    procs = {name: _spawn(settings, cfg, commands[name], port) for name, port in ports.items()}
    results: dict[str, JobResult] = {}
    routed_at: dict[str, float] = {}
    warm: set[str] = set()
    collector = make_raw_consumer(
        settings,
        topics.renders,
        topics.lane("draft"),
        topics.lane("final"),
        *[topics.spill(lane) for lane in routes.spill_lanes],
        group_id=None,
        auto_offset_reset="earliest",
    )
    await collector.start()

    async def collect() -> None:
        while True:
            batches = await collector.getmany(timeout_ms=50)
            now = time.time()
            for records in batches.values():
                for r in records:
                    e = parse_job_event(r.value)
                    if isinstance(e, GenerationRouted):
                        routed_at[e.job_id] = e.occurred_at.timestamp()
                    elif isinstance(e, RenderCompleted):
                        warm.add(e.job_id)
                        if e.job_id in results:
                            res = results[e.job_id]
                            res.done, res.inference_ms = now, e.timings.inference_ms
                            res.batch_size = e.timings.batch_size
                            # when its batch began on the GPU thread (a spilled draft may
                            # wait for a step boundary after its render.started)
                            began = (
                                e.requested_at or e.occurred_at
                            ).timestamp() + e.timings.queue_wait_ms / 1000
                            res.gpu_wait_s = began - routed_at[e.job_id]
                            res.route_s = routed_at[e.job_id] - res.submitted
                            res.store_ms = e.timings.store_ms or 0.0
                            res.completed_at = e.occurred_at.timestamp()
                            res.started_at = began
                            res.spilled = e.instance.endswith("-spill")
                            res.worker = e.instance.split("+")[0]
                            res.preempted_ms = e.timings.preempted_ms or 0.0

    collecting = asyncio.create_task(collect())
    async with httpx.AsyncClient() as http:
        for name, port in ports.items():
            await _wait_ready(http, port, procs[name])
        async with GenerationClient(settings) as client:
            # Warm-up before the clock starts: a render per lane, as the baseline gets, and a
            # trickle of drafts through the pipeline. The broker's request path is warmed
            # first: a fresh JVM runs it interpreted or half-compiled for its first ten
            # thousand requests (a produce->consume hop p50 2.55 ms after 1,500 round trips
            # here, 1.83 after 10,000), which a long-running production broker is long past
            # (the baseline has no broker).
            await _warm_broker(settings, cfg.broker_warmup_round_trips)
            warm_ids = [
                await client.submit(GenerationSpec(prompt="warm up", intent=i))
                for i in ("draft", "final")
            ]
            for _ in range(cfg.broker_warmup_jobs):
                warm_ids.append(
                    await client.submit(GenerationSpec(prompt="warm up", intent="draft"))
                )
                await asyncio.sleep(0.05)
            while not set(warm_ids) <= warm:
                await asyncio.sleep(0.1)
            freeze_startup_heap()  # the harness's own collections are not the system's
            t0 = time.monotonic()
            for offset, intent in plan:
                await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
                job_id = f"job_{uuid.uuid4().hex}"
                results[job_id] = JobResult(job_id, intent, time.time())
                await client.submit(
                    GenerationSpec(prompt=f"a {intent} product photo", intent=intent), job_id=job_id
                )
        deadline = time.monotonic() + 900
        while any(r.done is None for r in results.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        metrics = {
            name: (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            for name, port in ports.items()
            if name != "router"
        }
    crashes = 0
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        crashes += await asyncio.to_thread(proc.wait) != 0
    collecting.cancel()
    await collector.stop()
    return {
        "jobs": [asdict(r) for r in results.values()],
        "crashes": crashes,
        "ooms": sum(_metric_sum(m, "lanes_worker_oom_total") for m in metrics.values()),
        "peak_memory_bytes": max(
            _metric_max(m, "lanes_worker_peak_memory_bytes") for m in metrics.values()
        ),
        # what each worker's start-up profile let its batches hold
        "batch_caps": {
            f"{name} ({lane})": cap
            for name, m in metrics.items()
            for lane, cap in _metric_by_lane(m, "lanes_worker_batch_cap").items()
        },
    }


async def _warm_broker(settings: Any, round_trips: int) -> None:
    """Produce, fetch and commit ``round_trips`` small records on a scratch topic."""
    from schemas.topics import TopicSpec
    from services.kafka.clients import ensure_topics, make_consumer, make_producer

    topic = f"{settings.topic_prefix}bench.warmup"
    await ensure_topics(settings, [TopicSpec(topic, partitions=1, retention_ms=3_600_000)])
    producer = make_producer(settings, client_id="bench-warmup")
    consumer = make_consumer(settings, topic, group=f"{settings.cluster.group_prefix}bench-warmup")
    await producer.start()
    await consumer.start()
    try:
        for i in range(round_trips):
            await producer.send_and_wait(topic, b"warm", key=str(i).encode())
            while not await consumer.getmany(timeout_ms=1000):
                pass
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def _spawn(settings: Any, cfg: BurstConfig, args: list[str], port: int) -> subprocess.Popen[bytes]:
    """``lanes run <args>`` in its own process, on the benchmark's topics."""
    threads = str(max(1, (os.cpu_count() or 1) // cfg.workers))
    env = child_env(
        settings,
        os.environ,
        LANES_DEVICE=cfg.device,
        LANES_METRICS_PORT=str(port),
        LANES_LOG_LEVEL="WARNING",
        OMP_NUM_THREADS=threads,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "services.apps.cli", "run", *args],
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _argv(proc: subprocess.Popen[bytes]) -> Sequence[str]:
    return cast(Sequence[str], proc.args)


async def _wait_ready(http: Any, port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(
                f"{_argv(proc)[4:]} exited with {proc.returncode} before it was ready"
            )
        try:
            if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{_argv(proc)[4:]} not ready in 120 s")


def _samples(text: str, name: str) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        s for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name
    ]


def _metric_sum(text: str, name: str) -> float:
    return float(sum(s.value for s in _samples(text, name)))


def _metric_max(text: str, name: str) -> float:
    """A process-wide value exported once per lane the process serves (peak memory)."""
    return max((s.value for s in _samples(text, name)), default=0.0)


def _metric_by_lane(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in _samples(text, name):
        out[s.labels.get("lane", "")] = out.get(s.labels.get("lane", ""), 0.0) + s.value
    return out
