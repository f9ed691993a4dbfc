"""Burst benchmark: Lanes (lanes, caps, micro-batching over Kafka) against the old
architecture (one FIFO queue in front of the same engines, same number of workers).

Each architecture runs in its own process (so peak memory is its own) on the same arrival
plan: a steady trickle, then a burst at ``burst_factor`` times the steady rate. Writes
``burst.md`` (table) and ``burst.png`` (plot) into the results folder.

    lanes bench burst --jobs 60 --out results/          # tiny engines, CPU
    lanes bench burst --preset sd-turbo-class --device cuda --draft-steps 1 --final-steps 25
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.apps.bench.models import models_cache, preset_config
from services.apps.bench.stats import ensure_dir, markdown_table, pct

__all__ = ["BurstConfig", "plan_arrivals", "run_burst", "overhead_breakdown"]


@dataclass(frozen=True)
class BurstConfig:
    jobs: int = 72
    draft_share: float = 0.75
    burst_factor: float = 10.0
    steady_jobs: int = 24  # enough that the steady phase's p95 is not simply its maximum
    broker_warmup_jobs: int = 40  # drafts through the pipeline before the clock starts
    broker_warmup_round_trips: int = 2000  # produce/fetch/commit before those (JIT warm-up)
    draft_steps: int = 1  # turbo-style draft
    final_steps: int = 20
    final_guidance: float = 5.0
    width: int = 256
    height: int = 256
    workers: int = 2  # both architectures: split between the lanes for Lanes, one pool for FIFO
    draft_workers: int = 1  # Lanes: how many of them serve the draft lane (the rest: final)
    draft_cap: int = 4
    draft_batch: int = 4
    final_cap: int = 2
    final_batch: int = 2
    max_wait_ms: float = 15.0
    # Lanes: over this many drafts waiting, the router may spill new drafts to the final
    # lane's workers, which serve them ahead of finals (None: no spill, the lanes stay apart).
    spill_after_lag: int | None = 4
    # ... and over this many finals waiting, new finals may spill to the draft lane's workers,
    # which render them only while no draft needs the GPU (drafts run between their steps).
    final_spill_after_lag: int | None = 2
    device: str = "cpu"
    preset: str = "tiny"
    seed: int = 0


@dataclass
class JobResult:
    job_id: str
    intent: str
    submitted: float  # unix seconds
    done: float | None = None
    inference_ms: float | None = None
    gpu_wait_s: float | None = None  # routed/enqueued -> its batch started
    batch_size: int = 1
    route_s: float | None = None  # submitted -> routed (Lanes: the router hop)
    store_ms: float = 0.0  # writing the PNG (both architectures write it)
    completed_at: float | None = None  # when the worker created the render event
    started_at: float | None = None  # when its batch was handed to the GPU thread
    spilled: bool = False  # Lanes: served from its lane's spill queue by another lane's guest
    preempted_ms: float = 0.0  # Lanes: its render paused while more urgent drafts ran

    @property
    def e2e_s(self) -> float | None:
        return None if self.done is None else self.done - self.submitted

    @property
    def overhead_ms(self) -> float | None:
        """End-to-end minus inference, the wait for a GPU slot and the artifact write: what
        moving the job between processes costs."""
        if self.done is None or self.inference_ms is None or self.gpu_wait_s is None:
            return None
        work = self.inference_ms + self.gpu_wait_s * 1000 + self.store_ms + self.preempted_ms
        return max(0.0, (self.e2e_s or 0) * 1000 - work)

    def segments_ms(self) -> dict[str, float] | None:
        """Where the overhead goes (Lanes): the router hop (submitted until routed), the
        in-worker handoff (batch started until the outcome event was built, less inference,
        the PNG write and any pause between its steps) and the read-back (outcome event built until read from Kafka)."""
        route, started, built, done = self.route_s, self.started_at, self.completed_at, self.done
        if (
            route is None
            or started is None
            or built is None
            or done is None
            or self.inference_ms is None
        ):
            return None
        return {
            "router hop": route * 1000,
            "in-worker handoff": max(
                0.0,
                (built - started) * 1000 - self.inference_ms - self.store_ms - self.preempted_ms,
            ),
            "read-back": (done - built) * 1000,
        }


def overhead_breakdown(jobs: list[JobResult], steady_jobs: int) -> list[list[object]]:
    """Median and p95 of each overhead segment, in the steady phase and in the burst."""
    ordered = sorted(jobs, key=lambda j: j.submitted)
    phases = {"steady": ordered[:steady_jobs], "burst": ordered[steady_jobs:]}
    rows: list[list[object]] = []
    for phase, sel in phases.items():
        segs = [s for j in sel if (s := j.segments_ms()) is not None]
        for name in ("router hop", "in-worker handoff", "read-back"):
            values = [s[name] for s in segs]
            rows.append([phase, name, len(values), pct(values, 50), pct(values, 95)])
        totals = [j.overhead_ms for j in sel if j.overhead_ms is not None]
        rows.append([phase, "total overhead", len(totals), pct(totals, 50), pct(totals, 95)])
    return rows


def plan_arrivals(cfg: BurstConfig, steady_rate: float) -> list[tuple[float, str]]:
    """(offset seconds, intent) per job: ``steady_jobs`` at the steady rate, then the burst.

    Each phase holds its share of drafts exactly (in a seeded random order), so runs with
    different phase lengths compare the same mix rather than whatever the draws gave.
    """
    rng = random.Random(cfg.seed)
    intents: list[str] = []
    for n in (cfg.steady_jobs, cfg.jobs - cfg.steady_jobs):
        drafts = round(n * cfg.draft_share)
        phase = ["draft"] * drafts + ["final"] * (n - drafts)
        rng.shuffle(phase)
        intents += phase
    out, t = [], 0.0
    for i, intent in enumerate(intents):
        out.append((t, intent))
        t += 1.0 / (steady_rate if i < cfg.steady_jobs else steady_rate * cfg.burst_factor)
    return out


def spill_summary(cfg: BurstConfig, jobs: list[JobResult]) -> str:
    """What spilled where, per phase (jobs in submission order)."""
    if cfg.spill_after_lag is None and cfg.final_spill_after_lag is None:
        return (
            "Spill is off (`--no-spill`): each lane's burst waits in its own queue and "
            "each lane's workers serve only their lane."
        )
    out = []
    for intent, after, helper, how in (
        ("draft", cfg.spill_after_lag, "final", "ahead of finals (finals wait in Kafka meanwhile)"),
        (
            "final",
            cfg.final_spill_after_lag,
            "draft",
            "only while no draft needs the GPU (drafts run between its steps)",
        ),
    ):
        if after is None:
            continue
        steady = [j for j in jobs[: cfg.steady_jobs] if j.intent == intent]
        burst = [j for j in jobs[cfg.steady_jobs :] if j.intent == intent]
        out.append(
            f"over {after} {intent}s waiting, new {intent}s went to the {intent} lane's "
            f"spill queue when it was the shorter wait per server, served by the {helper} "
            f"lane's worker {how}: {sum(j.spilled for j in steady)} of {len(steady)} in "
            f"the steady phase, {sum(j.spilled for j in burst)} of {len(burst)} in the burst"
        )
    return "Spill: " + "; ".join(out) + "."


def _routes_yaml(cfg: BurstConfig) -> str:
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


async def _run_lanes(
    settings: Any, cfg: BurstConfig, plan: list[tuple[float, str]]
) -> dict[str, Any]:
    """The router and each worker in its own process, as `make up` runs them (the fleet split
    ``draft_workers`` / the rest); this process only submits and reads the outcomes back."""
    import httpx
    from aiokafka import AIOKafkaConsumer

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
    commands = {"router": ["router"]}
    for lane, n in (("draft", cfg.draft_workers), ("final", cfg.workers - cfg.draft_workers)):
        for i in range(n):
            commands[f"{lane}-{i}"] = ["worker", "--lane", lane, "--instance", f"bench-{lane}-{i}"]
    ports = {name: free_port() for name in commands}
    procs = {name: _spawn(settings, cfg, commands[name], port) for name, port in ports.items()}
    results: dict[str, JobResult] = {}
    routed_at: dict[str, float] = {}
    warm: set[str] = set()
    collector = AIOKafkaConsumer(
        topics.renders,
        topics.lane("draft"),
        topics.lane("final"),
        *[topics.spill(lane) for lane in routes.spill_lanes],
        bootstrap_servers=settings.kafka_bootstrap,
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
                            began = e.requested_at.timestamp() + e.timings.queue_wait_ms / 1000
                            res.gpu_wait_s = began - routed_at[e.job_id]
                            res.route_s = routed_at[e.job_id] - res.submitted
                            res.store_ms = e.timings.store_ms or 0.0
                            res.completed_at = e.occurred_at.timestamp()
                            res.started_at = began
                            res.spilled = e.instance.endswith("-spill")
                            res.preempted_ms = e.timings.preempted_ms or 0.0

    collecting = asyncio.create_task(collect())
    async with httpx.AsyncClient() as http:
        for name, port in ports.items():
            await _wait_ready(http, port, procs[name])
        async with GenerationClient(settings) as client:
            # Warm-up before the clock starts: a render per lane, as the baseline gets, and a
            # trickle of drafts through the pipeline. The broker's request path is warmed
            # first: a fresh JVM runs it interpreted for its first thousands of requests
            # (produce ack median 1.9 ms cold, 0.9 ms after 1,000 round trips here), which a
            # long-running production broker is long past (the baseline has no broker).
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
    consumer = make_consumer(settings, topic, group=f"{settings.group_prefix}bench-warmup")
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
    env = dict(
        os.environ,
        LANES_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        LANES_TOPIC_PREFIX=settings.topic_prefix,
        LANES_GROUP_PREFIX=settings.group_prefix,
        LANES_STATE_DIR=str(settings.state_dir),
        LANES_ARTIFACT_DIR=str(settings.artifacts_path),
        LANES_MODELS_DIR=str(settings.models_path),
        LANES_ROUTES_FILE=str(settings.routes_file),
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


async def _wait_ready(http: Any, port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[4:]} exited with {proc.returncode} before it was ready")
        try:
            if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{proc.args[4:]} not ready in 120 s")


def _samples(text: str, name: str) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        s for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name
    ]


def _metric_sum(text: str, name: str) -> float:
    return sum(s.value for s in _samples(text, name))


def _metric_max(text: str, name: str) -> float:
    """A process-wide value exported once per lane the process serves (peak memory)."""
    return max((s.value for s in _samples(text, name)), default=0.0)


def _metric_by_lane(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in _samples(text, name):
        out[s.labels.get("lane", "")] = out.get(s.labels.get("lane", ""), 0.0) + s.value
    return out


async def _run_fifo(
    settings: Any, cfg: BurstConfig, plan: list[tuple[float, str]]
) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from consumers.lane_worker.models import load_routes_model
    from services.config.routes import load_routes
    from services.engines.diffusion import RenderRequest
    from services.engines.memory import OutOfMemory
    from services.process.tuning import freeze_startup_heap
    from services.storage.artifacts import LocalArtifactStore

    routes = load_routes(settings.routes_file)
    store = LocalArtifactStore(settings.artifacts_path)
    engines = [
        await asyncio.to_thread(load_routes_model, settings, "draft", routes)
        for _ in range(cfg.workers)
    ]
    pools = [ThreadPoolExecutor(max_workers=1) for _ in engines]
    loop = asyncio.get_running_loop()
    for engine, pool in zip(engines, pools, strict=True):
        for lane in ("draft", "final"):
            s = routes.lanes[lane]
            await loop.run_in_executor(
                pool,
                engine.render_batch,
                [RenderRequest("warm up", s.width, s.height, s.sample_steps, s.guidance_scale, 0)],
            )
    queue: asyncio.Queue[tuple[JobResult, float]] = asyncio.Queue()
    results: list[JobResult] = []
    counters = {"ooms": 0, "crashes": 0}

    async def worker(engine: Any, pool: ThreadPoolExecutor) -> None:
        while True:
            job, enqueued = await queue.get()
            spec = routes.lanes[job.intent]
            req = RenderRequest(
                f"a {job.intent} product photo",
                spec.width,
                spec.height,
                spec.sample_steps,
                spec.guidance_scale,
                1,
            )
            started = time.time()
            try:
                (out,) = await loop.run_in_executor(pool, engine.render_batch, [req])
                stored = time.perf_counter()
                await loop.run_in_executor(None, store.put_png, job.job_id, job.intent, out.image)
                job.store_ms = (time.perf_counter() - stored) * 1000
                job.done, job.inference_ms = time.time(), out.inference_ms
                job.gpu_wait_s = started - enqueued
            except OutOfMemory:
                counters["ooms"] += 1
            finally:
                queue.task_done()

    tasks = [asyncio.create_task(worker(e, p)) for e, p in zip(engines, pools, strict=True)]
    freeze_startup_heap()  # as the Lanes run does before its clock
    t0 = time.monotonic()
    for offset, intent in plan:
        await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
        job = JobResult(f"job_{uuid.uuid4().hex}", intent, time.time())
        results.append(job)
        queue.put_nowait((job, time.time()))
    await asyncio.wait_for(queue.join(), 600)
    for t in tasks:
        t.cancel()
    return {"jobs": [asdict(r) for r in results], **counters}


def _child(
    arch: str, cfg: BurstConfig, plan: list[tuple[float, str]], bootstrap: str, workdir: Path
) -> dict[str, Any]:
    import torch

    from services.config.settings import Settings
    from services.engines.memory import peak_memory_bytes
    from services.process.logs import configure_logging

    configure_logging("WARNING", json=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    routes = workdir / "routes.yaml"
    ns = f"bench{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka_bootstrap=bootstrap,
        topic_prefix=ns,
        group_prefix=ns,
        state_dir=workdir / "state",
        artifact_dir=workdir / arch,
        routes_file=routes,
        models_dir=models_cache(),
        device=cfg.device,
        log_level="WARNING",
    )
    runner = _run_lanes if arch == "lanes" else _run_fifo
    out = asyncio.run(runner(settings, cfg, plan))
    out.setdefault("peak_memory_bytes", peak_memory_bytes(cfg.device))
    return out


# ---- orchestration -------------------------------------------------------------------


def _calibrate(cfg: BurstConfig, workdir: Path) -> dict[str, float]:
    """Seconds per job, per intent, one at a time on one engine (sets the steady rate)."""
    import torch

    from consumers.lane_worker.models import load_routes_model
    from services.config.routes import load_routes
    from services.config.settings import Settings
    from services.engines.diffusion import RenderRequest

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    settings = Settings(
        state_dir=workdir / "state",
        routes_file=workdir / "routes.yaml",
        device=cfg.device,
        models_dir=models_cache(),
    )
    routes = load_routes(settings.routes_file)
    engine = load_routes_model(settings, "draft", routes)

    def seconds_per_image(lane: str, batch: int) -> float:
        s = routes.lanes[lane]
        reqs = [
            RenderRequest("calibrate", s.width, s.height, s.sample_steps, s.guidance_scale, i)
            for i in range(batch)
        ]
        engine.render_batch(reqs)  # warm-up
        started = time.perf_counter()
        for _ in range(3):
            engine.render_batch(reqs)
        return (time.perf_counter() - started) / 3 / batch

    return {
        "draft": seconds_per_image("draft", 1),
        "final": seconds_per_image("final", 1),
        # what batching buys on this device
        "draft_batched": seconds_per_image("draft", cfg.draft_batch),
    }


def _summary(arch: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    jobs = [JobResult(**j) for j in data["jobs"]]
    done = [j for j in jobs if j.done is not None]
    span = (max(j.done for j in done) - min(j.submitted for j in jobs)) if done else float("nan")
    rows = []
    for intent in ("draft", "final", "all"):
        sel = [j for j in done if intent in ("all", j.intent)]
        lat = [j.e2e_s for j in sel if j.e2e_s is not None]
        over = [j.overhead_ms for j in sel if j.overhead_ms is not None]
        rows.append(
            {
                "arch": arch,
                "intent": intent,
                "jobs": len([j for j in jobs if intent in ("all", j.intent)]),
                "p50_s": pct(lat, 50),
                "p95_s": pct(lat, 95),
                "p99_s": pct(lat, 99),
                "throughput_jps": len(sel) / span if span else float("nan"),
                "overhead_p95_ms": pct(over, 95),
                "mean_batch": sum(j.batch_size for j in sel) / max(1, len(sel)),
                "peak_mem_mb": data["peak_memory_bytes"] / 2**20,
                "ooms": data["ooms"],
                "lost": len([j for j in jobs if j.done is None and intent in ("all", j.intent)]),
                "crashes": data["crashes"],
            }
        )
    return rows


def _plot(all_data: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arch, data in all_data.items():
        for intent, style in (("draft", "-"), ("final", "--")):
            lat = sorted(
                j["done"] - j["submitted"]
                for j in data["jobs"]
                if j["intent"] == intent and j["done"]
            )
            if lat:
                axes[0].plot(lat, np.linspace(0, 1, len(lat)), style, label=f"{arch} {intent}")
        jobs = sorted(data["jobs"], key=lambda j: j["submitted"])
        t0 = jobs[0]["submitted"]
        axes[1].scatter(
            [j["submitted"] - t0 for j in jobs if j["done"]],
            [j["done"] - j["submitted"] for j in jobs if j["done"]],
            s=10,
            label=arch,
        )
    axes[0].set(
        xlabel="end-to-end latency (s)",
        ylabel="fraction of jobs",
        title="Latency CDF under the burst",
    )
    axes[1].set(
        xlabel="submitted at (s)", ylabel="end-to-end latency (s)", title="Latency by arrival time"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_burst(cfg: BurstConfig, out_dir: Path) -> Path:
    from services.config.settings import Settings
    from services.kafka.local_broker import local_kafka

    out_dir = ensure_dir(out_dir)
    with tempfile.TemporaryDirectory(prefix="lanes-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "routes.yaml").write_text(_routes_yaml(cfg))
        service = _calibrate(cfg, workdir)
        mean_service = cfg.draft_share * service["draft"] + (1 - cfg.draft_share) * service["final"]
        steady_rate = 0.5 * cfg.workers / mean_service  # half the pool's capacity
        plan = plan_arrivals(cfg, steady_rate)
        with local_kafka(Settings(), workdir) as bootstrap:
            all_data = {}
            for arch in ("lanes", "fifo"):
                spec = {
                    "arch": arch,
                    "cfg": asdict(cfg),
                    "plan": plan,
                    "bootstrap": bootstrap,
                    "workdir": str(workdir),
                }
                (workdir / "spec.json").write_text(json.dumps(spec))
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "services.apps.bench.burst",
                        str(workdir / "spec.json"),
                        str(workdir / f"{arch}.json"),
                    ],
                    check=True,
                )
                all_data[arch] = json.loads((workdir / f"{arch}.json").read_text())
    (out_dir / "burst-raw.json").write_text(json.dumps(all_data))
    rows = _summary("lanes", all_data["lanes"]) + _summary("fifo", all_data["fifo"])
    _plot(all_data, out_dir / "burst.png")
    by = {(r["arch"], r["intent"]): r for r in rows}
    ratio = by[("lanes", "draft")]["p95_s"] / by[("fifo", "draft")]["p95_s"]
    lanes_all = by[("lanes", "all")]
    lanes_jobs = sorted(
        (JobResult(**j) for j in all_data["lanes"]["jobs"]), key=lambda j: j.submitted
    )
    steady_over = pct(
        [j.overhead_ms for j in lanes_jobs[: cfg.steady_jobs] if j.overhead_ms is not None], 95
    )
    checks = [
        ("draft p95 under the burst ≤ 0.35× the FIFO baseline", f"{ratio:.2f}×", ratio <= 0.35),
        (
            "orchestration overhead p95 ≤ 20 ms per job, steady phase",
            f"{steady_over:.1f} ms",
            steady_over <= 20,
        ),
        (
            "orchestration overhead p95 ≤ 20 ms per job, whole run (burst included)",
            f"{lanes_all['overhead_p95_ms']:.1f} ms",
            lanes_all["overhead_p95_ms"] <= 20,
        ),
        ("0 lost jobs", str(lanes_all["lost"]), lanes_all["lost"] == 0),
        ("0 worker crashes", str(lanes_all["crashes"]), lanes_all["crashes"] == 0),
    ]
    batch_gain = service["draft"] / service["draft_batched"]
    caps = ", ".join(
        f"{name} {cap:g}" for name, cap in all_data["lanes"].get("batch_caps", {}).items()
    )
    draft_work = cfg.draft_share * service["draft"] / mean_service
    spill_text = spill_summary(cfg, lanes_jobs)
    headers = [
        "arch",
        "intent",
        "jobs",
        "p50 s",
        "p95 s",
        "p99 s",
        "throughput jobs/s",
        "overhead p95 ms",
        "mean batch",
        "peak mem MB",
        "OOMs",
        "lost",
        "crashes",
    ]
    table = markdown_table(headers, [list(r.values())[:13] for r in rows])
    md = [
        f"# Burst benchmark ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Engines: `{cfg.preset}` random-weight SD pipeline on `{cfg.device}`, {cfg.width}x{cfg.height}; "
        f"draft {cfg.draft_steps} steps, final {cfg.final_steps} steps with CFG {cfg.final_guidance}. "
        f"Measured service time one at a time: draft {service['draft'] * 1000:.0f} ms, "
        f"final {service['final'] * 1000:.0f} ms; a draft in a batch of {cfg.draft_batch}: "
        f"{service['draft_batched'] * 1000:.0f} ms per image ({batch_gain:.2f}x the throughput "
        f"of one at a time).",
        f"Plan: {cfg.jobs} jobs ({cfg.draft_share:.0%} draft), {cfg.steady_jobs} at the steady rate "
        f"{steady_rate:.2f} jobs/s (half the pool's capacity), then a burst at {cfg.burst_factor:g}x. "
        f"{cfg.workers} workers in both: Lanes runs {cfg.draft_workers} on the draft lane (cap "
        f"{cfg.draft_cap}, batch {cfg.draft_batch}) and {cfg.workers - cfg.draft_workers} on the final "
        f"lane (cap {cfg.final_cap}, batch {cfg.final_batch}), one process each "
        f"(batch caps after each worker's start-up profile: {caps}), "
        f"over Kafka; the "
        f"baseline is one in-memory FIFO queue in front of {cfg.workers} workers (no broker hops at all).",
        "",
        table,
        "",
        "End-to-end: submitted until the render event was read back from Kafka (Lanes) / the "
        "render was stored (FIFO). Peak memory: the largest worker process (Lanes) / the one "
        "process holding both workers (FIFO). Overhead: end-to-end minus inference minus the time the job "
        "waited for a GPU slot (routed until its batch started, and any pause between its "
        "steps while a spilled draft ran) minus the PNG write (both "
        "architectures write it), i.e. what moving the job through Kafka adds. Memory is "
        "resident memory on CPU, max allocated on CUDA.",
        "",
        "Where the overhead goes (Lanes, ms):",
        "",
        markdown_table(
            ["phase", "segment", "jobs", "p50 ms", "p95 ms"],
            overhead_breakdown(lanes_jobs, cfg.steady_jobs),
        ),
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        *[f"| {name} | {value} | {'yes' if ok else 'NO'} |" for name, value, ok in checks],
        "",
        "On a CPU-only machine the renders themselves occupy the cores that the broker and "
        "the workers' event loops need, so the overhead measured during the burst includes "
        "CPU starvation that a GPU host (inference on the GPU) does not have; the steady-phase "
        "row is the orchestration cost with the cores not saturated.",
        "",
        spill_text,
        "",
        f"Draft ratio: the baseline's draft p95 is set by how fast all workers clear everything "
        f"in arrival order; Lanes' by how fast the draft lane ({cfg.draft_workers} of "
        f"{cfg.workers} workers) plus, with spill, the final lane's workers clear the drafts "
        f"alone. Drafts are {draft_work:.0%} of the work in this mix; batching adds "
        f"{batch_gain:.2f}x here (a GPU is where it pays).",
        "",
        "Finals: with a fixed fleet, Lanes gives finals their own lane and workers; under a "
        "burst with spill on they also wait for the drafts their workers take on (the "
        "deferral of non-critical work the design asks for); compare the final rows. The "
        "per-lane autoscaling signal (spill backlog included) is what gives a saturated lane "
        "more replicas.",
        "",
        "![latency](burst.png)",
        "",
    ]
    path = out_dir / "burst.md"
    path.write_text("\n".join(md))
    return path


def _child_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    cfg = BurstConfig(**spec["cfg"])
    plan = [tuple(p) for p in spec["plan"]]
    data = _child(spec["arch"], cfg, plan, spec["bootstrap"], Path(spec["workdir"]))  # type: ignore[arg-type]
    Path(out_path).write_text(json.dumps(data))


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
