"""`lanes bench chaos`: a job stream with webhooks, for a bounded time, on a 3-broker
cluster, while components and one broker are killed (-9) on a schedule.

Every component is its own process (`lanes run ...`), restarted a second after it is
killed, as an orchestrator would. The client submits with an Idempotency-Key and retries
a 503 or a dropped connection, as the SDK docs say. At the end the load stops and the
run waits for every accepted job's terminal webhook, then counts: jobs accepted,
succeeded, lost (accepted, no terminal webhook), duplicate terminal webhooks (a second
distinct webhook-id for one job), redeliveries (the same webhook-id again: allowed by
Standard Webhooks, receivers deduplicate), kills, crashes, and the p95 of first submit ->
terminal webhook (503 retries included) for jobs that met a fault against those that did
not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog
import uvicorn
from fastapi import FastAPI, Request, Response

from services.apps.bench.processes import Proc, start_proc, wait_ready
from services.apps.bench.stats import ensure_dir, markdown_table, pct
from services.apps.registry import Component, command, components
from services.apps.supervisor import prepare_cluster
from services.auth.key_admin import create_key
from services.config.routes import load_routes
from services.config.settings import Settings
from services.kafka.local_broker import KafkaCluster
from services.process.ops_server import EmbeddedServer
from services.process.ports import free_port

__all__ = ["ChaosConfig", "run_chaos"]

log = structlog.get_logger("lanes.bench")
TERMINAL = ("generation.succeeded", "generation.failed", "generation.canceled")
ROUTES = """\
models:
  tiny-sd: {tiny: {seed: 0}, version: tiny-v1}
lanes:
  draft: {model: tiny-sd, sample_steps: 2, width: 64, height: 64, max_concurrency: 4, max_batch: 4}
intents: {draft: draft, final: draft}
"""


@dataclass
class ChaosConfig:
    duration_s: float = 150.0
    rate_per_s: float = 1.0  # jobs submitted per second
    kill_every_s: float = 15.0  # a component is killed this often (each in turn)
    broker_kill_at_s: float = 60.0  # one broker killed then (a random one)
    broker_down_s: float = 20.0
    # A job submitted from 2 s before a kill to this long after it (after the broker's
    # return, for the broker) "met a fault".
    fault_window_s: float = 6.0
    drain_s: float = 240.0
    seed: int = 7
    # Each component restarts under its own LANES_INSTANCE_ID (static group membership, as
    # a crashed container does in its pod); False: dynamic membership.
    static_members: bool = True
    kill_order: list[str] | None = None  # component names to kill in turn (None: shuffled)


@dataclass
class Receiver:
    """Webhook deliveries by job: (webhook-id, type, seconds since the run began)."""

    started: float
    seen: dict[str, list[tuple[str, str, float]]] = field(default_factory=lambda: defaultdict(list))

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = json.loads(await request.body())
            self.seen[body["data"]["job_id"]].append(
                (
                    request.headers.get("webhook-id", ""),
                    body["type"],
                    time.monotonic() - self.started,
                )
            )
            return Response(status_code=204)

        return app

    def terminal(self, job_id: str) -> list[tuple[str, str, float]]:
        return [d for d in self.seen.get(job_id, []) if d[1] in TERMINAL]


@dataclass
class Fleet:
    """The component processes, by name; each killed one is restarted after a second, and
    one that exits on its own (a crash) too, as Kubernetes' restartPolicy does, counted."""

    settings: Settings
    work: Path
    gateway_port: int
    static_members: bool
    procs: dict[str, Proc] = field(default_factory=dict)
    crashes: list[tuple[float, str, int]] = field(default_factory=list)
    restarting: set[str] = field(default_factory=set)

    def start(self, comp: Component) -> None:
        port = self.gateway_port if comp.name == "gateway" else None
        self.procs[comp.name] = start_proc(
            self.settings,
            command(comp),
            self.work / f"{comp.name}.log",
            port=port,
            LANES_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
            LANES_PUBLISH_TIMEOUT_S="5",
            # A killed member's partitions move once its session expires: 10 s, not 30.
            LANES_KAFKA_SESSION_TIMEOUT_MS="10000",
            LANES_BATCH_CALIBRATION="false",
            **({"LANES_INSTANCE_ID": f"chaos-{comp.name}"} if self.static_members else {}),
        )

    async def kill_and_restart(self, comp: Component) -> None:
        self.restarting.add(comp.name)
        self.procs[comp.name].kill()
        await asyncio.sleep(1.0)
        self.start(comp)
        self.restarting.discard(comp.name)

    async def watch(self, comps: list[Component], t0: float) -> None:
        """Restart any component that exited unasked, a second later."""
        while True:
            for comp in comps:
                proc = self.procs.get(comp.name)
                code = proc.popen.poll() if proc is not None else None
                if code is not None and comp.name not in self.restarting:
                    self.crashes.append((time.monotonic() - t0, comp.name, code))
                    log.warning("chaos_crash", component=comp.name, code=code)
                    asyncio.create_task(self.kill_and_restart(comp))
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


async def _submit(
    http: httpx.AsyncClient, i: int, hook: str, accepted: dict[str, float], t0: float
) -> None:
    """Submit job ``i`` until accepted; record when it was first sent (a client's wait for
    a 202 through retries counts in its latency)."""
    key = uuid.uuid4().hex
    body = {"prompt": f"a ceramic mug {i}", "intent": "draft", "webhook_url": hook}
    sent = time.monotonic() - t0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            resp = await http.post("/v1/generations", json=body, headers={"Idempotency-Key": key})
            if resp.status_code == 202:
                accepted[resp.json()["job_id"]] = sent
                return
        await asyncio.sleep(1.0)
    log.warning("chaos_submit_gave_up", job=i)


async def _run(cfg: ChaosConfig, work: Path, given: KafkaCluster | None) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    cluster = given or KafkaCluster(work / "cluster", size=3)
    if given is None:
        await asyncio.to_thread(cluster.start)
    routes_file = work / "routes.yaml"
    routes_file.write_text(ROUTES)
    base = Settings()
    settings = base.model_copy(
        update={
            "kafka_bootstrap": cluster.bootstrap,
            "topic_replication_factor": 3,
            "topic_min_insync_replicas": 2,
            "topic_prefix": f"chaos{uuid.uuid4().hex[:6]}.",
            "group_prefix": "chaos.",
            "routes_file": routes_file,
            "state_dir": work / "state",
            "models_dir": base.models_path,
        }
    )
    fleet = Fleet(settings, work, free_port(), cfg.static_members)
    t0 = time.monotonic()
    receiver = Receiver(t0)
    hook_port = free_port()
    hook_server = EmbeddedServer(
        uvicorn.Config(receiver.app(), host="127.0.0.1", port=hook_port, log_level="warning")
    )
    hook_task = asyncio.create_task(hook_server.serve())
    kills: list[tuple[float, str]] = []
    accepted: dict[str, float] = {}
    try:
        await prepare_cluster(settings)
        key, _ = await create_key(settings, "chaos", ["admin"], name="lanes bench chaos")
        comps = components(load_routes(routes_file))
        for comp in comps:
            fleet.start(comp)
        await asyncio.gather(*(wait_ready(p, 300) for p in fleet.procs.values()))
        http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{fleet.gateway_port}",
            timeout=15,
            headers={"Authorization": f"Bearer {key}"},
        )
        hook = f"http://127.0.0.1:{hook_port}/hook"
        t0 = receiver.started = time.monotonic()
        watcher = asyncio.create_task(fleet.watch(comps, t0))
        submits: list[asyncio.Task[None]] = []
        next_kill, broker_done, i, killed = cfg.kill_every_s, False, 0, 0
        by_name = {c.name: c for c in comps}
        order = (
            [by_name[n] for n in cfg.kill_order]
            if cfg.kill_order
            else rng.sample(comps, len(comps))
        )
        broker_back: tuple[float, int] | None = None
        restarting: asyncio.Task[None] | None = None
        while (now := time.monotonic() - t0) < cfg.duration_s:
            while i < now * cfg.rate_per_s:
                submits.append(asyncio.create_task(_submit(http, i, hook, accepted, t0)))
                i += 1
            if now >= next_kill:  # each component in turn (a shuffled order), then again
                comp = order[killed % len(order)]
                killed += 1
                kills.append((now, comp.name))
                log.info("chaos_kill", component=comp.name, at_s=round(now, 1))
                asyncio.create_task(fleet.kill_and_restart(comp))
                next_kill += cfg.kill_every_s
            if not broker_done and now >= cfg.broker_kill_at_s:
                node = rng.choice(cluster.nodes)
                kills.append((now, f"broker-{node.node_id}"))
                log.info("chaos_kill", component=f"broker-{node.node_id}", at_s=round(now, 1))
                await asyncio.to_thread(node.kill)  # (SIGKILL: returns at once)
                broker_done, broker_back = True, (now + cfg.broker_down_s, node.node_id)
            if broker_back is not None and now >= broker_back[0]:
                # In the background: the clock (submits, kills) goes on while it starts.
                restarting = asyncio.create_task(
                    asyncio.to_thread(cluster.node(broker_back[1]).start)
                )
                broker_back = None
            await asyncio.sleep(0.1)
        await asyncio.gather(*submits)
        if restarting is not None:
            await restarting
        if broker_back is not None:
            await asyncio.to_thread(cluster.node(broker_back[1]).start)
        deadline = time.monotonic() + cfg.drain_s
        while time.monotonic() < deadline and any(not receiver.terminal(j) for j in accepted):
            await asyncio.sleep(1.0)
        await asyncio.sleep(5)  # a duplicate would have arrived by now
        watcher.cancel()
        await http.aclose()
    finally:
        fleet.stop()
        hook_server.should_exit = True
        await asyncio.gather(hook_task, return_exceptions=True)
        if given is None:
            await asyncio.to_thread(cluster.stop)
    return {
        "accepted": accepted,
        "receiver": receiver,
        "kills": kills,
        "crashes": fleet.crashes,
        "cfg": cfg,
    }


def _summarize(run: dict[str, Any]) -> tuple[list[list[object]], dict[str, list[float]]]:
    cfg: ChaosConfig = run["cfg"]
    receiver: Receiver = run["receiver"]
    accepted: dict[str, float] = run["accepted"]
    windows = [
        (t - 2, t + cfg.fault_window_s + (cfg.broker_down_s if name.startswith("broker") else 0))
        for t, name in run["kills"]
    ]
    lat: dict[str, list[float]] = {"faults": [], "calm": []}
    succeeded = lost = duplicates = redelivered = 0
    points: dict[str, list[float]] = {"t": [], "latency": [], "fault": []}
    for job_id, at in accepted.items():
        terminal = receiver.terminal(job_id)
        if not terminal:
            lost += 1
            continue
        ids = {wid for wid, _, _ in terminal}
        duplicates += len(ids) - 1
        redelivered += len(terminal) - len(ids)
        succeeded += any(kind == "generation.succeeded" for _, kind, _ in terminal)
        latency = min(t for _, _, t in terminal) - at
        met_fault = any(start <= at <= end for start, end in windows)
        lat["faults" if met_fault else "calm"].append(latency)
        points["t"].append(at)
        points["latency"].append(latency)
        points["fault"].append(float(met_fault))
    rows: list[list[object]] = [
        [
            len(accepted),
            succeeded,
            lost,
            duplicates,
            redelivered,
            len(run["kills"]),
            len(run["crashes"]),
            pct(lat["faults"], 95),
            pct(lat["calm"], 95),
            len(lat["faults"]),
            len(lat["calm"]),
        ]
    ]
    return rows, points


def _plot(points: dict[str, list[float]], kills: list[tuple[float, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    colors = ["tab:red" if f else "tab:blue" for f in points["fault"]]
    ax.scatter(points["t"], points["latency"], c=colors, s=12)
    for at, name in kills:
        ax.axvline(at, color="grey", alpha=0.4, linestyle="--")
        ax.text(at, ax.get_ylim()[1] * 0.95, name, rotation=90, fontsize=7, va="top")
    ax.set(
        xlabel="submitted at (s into the run)",
        ylabel="submitted -> terminal webhook (s)",
        title="Jobs under chaos (red: submitted within a fault window)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_chaos(cfg: ChaosConfig, out: Path, cluster: KafkaCluster | None = None) -> Path:
    """Run the soak; its table, plot and JSON go to ``out``, each process's log and the
    brokers' logs to ``out/chaos-run`` (replaced by the next run). ``cluster``: a running
    3-node cluster to use (its own topics; every node is running again when it returns),
    else the soak starts and stops its own."""
    out = ensure_dir(out)
    work = out / "chaos-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    run = asyncio.run(_run(cfg, work, cluster))
    for node in (work / "cluster").glob("node-*"):
        shutil.rmtree(node / "data", ignore_errors=True)  # logs stay, the data goes
    shutil.rmtree(work / "state", ignore_errors=True)
    rows, points = _summarize(run)
    headers = [
        "jobs accepted", "succeeded", "lost", "duplicate terminal webhooks",
        "redelivered (same webhook-id)", "kills", "crashes (restarted)", "p95 with a fault (s)",
        "p95 without (s)",
        "jobs with a fault", "jobs without",
    ]  # fmt: skip
    kills = ", ".join(f"{name} at {at:.0f}s" for at, name in run["kills"])
    crashes = ", ".join(f"{name} at {at:.0f}s (exit {code})" for at, name, code in run["crashes"])
    path = out / "chaos.md"
    path.write_text(
        "# Chaos soak (`lanes bench chaos`)\n\n"
        f"{cfg.duration_s:.0f} s of {cfg.rate_per_s:g} job/s with webhooks on a 3-broker "
        "cluster (replication 3, min.insync.replicas 2); every component its own process, "
        f"one killed (-9) every {cfg.kill_every_s:g} s (each in turn, in a shuffled "
        "order) and restarted a second later; one "
        f"broker killed at {cfg.broker_kill_at_s:g} s and restarted {cfg.broker_down_s:g} s "
        "later. Group membership: "
        + ("static (each restarts under its instance id)" if cfg.static_members else "dynamic")
        + ". Targets: 0 lost, 0 duplicates.\n\n"
        + markdown_table(headers, rows)
        + f"\n\nKills: {kills}\n\nCrashes: {crashes or 'none'}\n\n"
        "![latency under chaos](chaos.png)\n"
    )
    _plot(points, run["kills"], out / "chaos.png")
    (out / "chaos.json").write_text(json.dumps(dict(zip(headers, rows[0], strict=True))))
    return path
