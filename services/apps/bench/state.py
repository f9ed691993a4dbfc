"""`lanes bench state`: what the number of jobs ever made costs a gateway and a lane worker.

For each history size (default 0, 100k, 1M job records in ``lanes.jobs``, spread over the
days a marketplace at 100k jobs/day takes to make them), in one run on one broker:
- a new gateway replica (empty state dir): time until /readyz, its catch-up rate, RSS;
- GET /v1/generations/{id} of random stored jobs, and a filtered list page: p50/p95;
- the same gateway restarted on its state dir: time until /readyz, RSS;
- a lane worker on the tiny model: time until /readyz and RSS.
Each component is its own process (``lanes run ...``), as on a host of a fleet.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from producers.kafka import make_producer
from schemas.events import Timings
from schemas.records import Artifact, JobState, Verification
from schemas.spec import GenerationSpec
from schemas.topics import Topics
from services.apps.bench.processes import Proc, start_proc, wait_ready
from services.apps.bench.stats import ensure_dir, markdown_table, pct
from services.apps.registry import GATEWAY, command, workers
from services.auth.key_admin import create_key
from services.config.routes import load_routes
from services.config.settings import Settings
from services.kafka.clients import ensure_topics

__all__ = ["StateConfig", "run_state"]

MARK_ID = "job_00000000000000000000000000000000"
MARK_TIME = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class StateConfig:
    sizes: list[int] = field(default_factory=lambda: [0, 100_000, 1_000_000])
    gets: int = 2000
    per_day: int = 100_000  # the history's pace: timestamps spread at this rate
    worker_lane: str | None = "draft"  # None: skip the lane worker


def _template(status: str) -> str:
    """A realistic finished job record (cascade: draft, upscale, one verification)."""
    spec = GenerationSpec(
        prompt="A product shot of a ceramic coffee mug on a walnut table, morning light, "
        "the text 'SUMMER SALE' in bold sans-serif on the mug, shallow depth of field",
        intent="final",
        tenant="marketplace",
        text="SUMMER SALE",
        webhook_url="https://hooks.example.com/lanes",
        metadata={"sku": "MUG-1234", "campaign": "summer-2026", "locale": "en-US"},
    )
    art = {
        "width": 1024,
        "height": 1024,
        "model": "sdxl",
        "version": "2026-11-01",
        "instance": "gpu-7-draft",
    }
    uri = f"s3://lanes-artifacts/prod/{MARK_ID}"
    artifacts = [
        Artifact(
            stage="draft",
            deliverable=False,
            uri=f"{uri}/draft-a1.png",
            **art | {"width": 512, "height": 512},
        ),
        Artifact(stage="upscaled", uri=f"{uri}/upscaled-a1.png", **art),
    ]
    check = Verification(
        expected="SUMMER SALE",
        read="SUMMER SALE",
        score=1.0,
        passed=True,
        threshold=0.8,
        artifact_uri=artifacts[1].uri,
    )
    job = JobState(
        job_id=MARK_ID,
        status=status,
        spec=spec,
        expected_text="SUMMER SALE",
        fingerprint="f" * 64,
        lane="upscale",
        model="sdxl",
        version="2026-11-01",
        created_at=MARK_TIME,
        started=True,
        updated_at=MARK_TIME,
        finished_at=MARK_TIME,
        timings=Timings(
            queue_wait_ms=40, inference_ms=620, total_ms=910, kafka_wait_ms=12, store_ms=30
        ),
        artifacts=artifacts,
        delivered=artifacts[1],
        verification=check,
        verifications=[check],
        milestones={m: MARK_TIME for m in ("draft_ready", "upscaled", "verified", status)},
        seen_events=[uuid.UUID(int=i).hex for i in range(8)],
    )
    return job.model_dump_json()


def _records(n: int, per_day: int) -> Iterator[tuple[str, bytes, int]]:
    """``n`` job records, the newest now, one every 86400/per_day seconds before it."""
    templates = {s: _template(s) for s in ("succeeded", "failed", "canceled")}
    mark = MARK_TIME.isoformat().replace("+00:00", "Z")
    now = datetime.now(UTC)
    step = timedelta(seconds=86400 / per_day)
    for i in range(n):
        status = "failed" if i % 25 == 0 else "canceled" if i % 97 == 0 else "succeeded"
        at = now - step * (n - 1 - i)
        job_id = f"job_{uuid.UUID(int=i).hex}"
        text = (
            templates[status]
            .replace(MARK_ID, job_id)
            .replace(mark, at.isoformat().replace("+00:00", "Z"))
        )
        yield job_id, text.encode(), int(at.timestamp() * 1000)


async def _fill(settings: Settings, n: int, per_day: int) -> float:
    """Write ``n`` job records to the namespace's lanes.jobs; return the seconds it took."""
    routes = load_routes(settings.routes_file)
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings, topics.specs(routes.lanes, routes.spill_lanes))
    producer = make_producer(
        settings,
        client_id="bench-state",
        linger_ms=50,  # bulk load: full batches
        max_batch_size=1 << 20,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value, ts in _records(n, per_day):
            pending.append(
                await producer.send(topics.jobs, value=value, key=key.encode(), timestamp_ms=ts)
            )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def _latencies(proc: Proc, n_jobs: int, gets: int, key: str) -> dict[str, float]:
    base = f"http://127.0.0.1:{proc.port}"
    get_ms: list[float] = []
    list_ms: list[float] = []
    rng = random.Random(7)
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=auth) as http:
        for i in range(gets):
            job_id = f"job_{uuid.UUID(int=rng.randrange(max(n_jobs, 1))).hex}"
            t0 = time.perf_counter()
            resp = await http.get(f"/v1/generations/{job_id}")
            get_ms.append((time.perf_counter() - t0) * 1000)
            if resp.status_code != (200 if n_jobs else 404):
                raise RuntimeError(f"GET {job_id}: {resp.status_code} {resp.text[:200]}")
            if i % 10 == 0:
                t0 = time.perf_counter()
                page = await http.get("/v1/generations", params={"status": "failed", "limit": 20})
                list_ms.append((time.perf_counter() - t0) * 1000)
                page.raise_for_status()
    return {
        "get_p50": pct(get_ms, 50),
        "get_p95": pct(get_ms, 95),
        "list_p50": pct(list_ms, 50),
        "list_p95": pct(list_ms, 95),
    }


async def _measure(settings: Settings, cfg: StateConfig, n: int, work: Path) -> dict[str, float]:
    ns = f"bench{n}-{uuid.uuid4().hex[:6]}."
    s = settings.model_copy(update={"topic_prefix": ns, "group_prefix": ns})
    row: dict[str, float] = {"jobs": n, "fill_s": await _fill(s, n, cfg.per_day)}
    gw_dir = work / f"gateway-{n}"
    gw_settings = s.model_copy(update={"state_dir": gw_dir})
    argv = command(GATEWAY)
    key, _ = await create_key(s, "bench", ["admin"], name="lanes bench state")
    gateway = start_proc(gw_settings, argv, work / f"gateway-{n}.log")
    try:
        row["new_ready_s"] = await wait_ready(gateway)
        row["new_rss_mb"] = gateway.rss_mb()
        row.update(await _latencies(gateway, n, cfg.gets, key))
        row["rss_after_gets_mb"] = gateway.rss_mb()
    finally:
        gateway.stop()
    gateway = start_proc(gw_settings, argv, work / f"gateway-{n}.log")
    try:
        row["restart_ready_s"] = await wait_ready(gateway)
        row["restart_rss_mb"] = gateway.rss_mb()
    finally:
        gateway.stop()
    view = gw_dir / "views" / f"{ns.strip('.')}.gateway-jobs.sqlite"
    row["view_mb"] = sum(p.stat().st_size for p in view.parent.glob(view.name + "*")) / 2**20
    if cfg.worker_lane is not None:
        (comp,) = [c for c in workers(load_routes(s.routes_file)) if c.lane == cfg.worker_lane]
        worker_settings = s.model_copy(update={"state_dir": work / f"worker-{n}"})
        log_path = work / f"worker-{n}.log"
        # INFO: its `worker_ready` line says where the start-up went
        worker = start_proc(worker_settings, command(comp), log_path, LANES_LOG_LEVEL="INFO")
        try:
            row["worker_ready_s"] = await wait_ready(worker)
            row["worker_rss_mb"] = worker.rss_mb()
        finally:
            worker.stop()
        row.update(_worker_phases(log_path))
    return row


def _plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [r["jobs"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(jobs, [r["new_rss_mb"] for r in rows], "o-", label="gateway (new replica)")
    left.plot(jobs, [r["restart_rss_mb"] for r in rows], "s--", label="gateway (restarted)")
    if all("worker_rss_mb" in r for r in rows):
        left.plot(jobs, [r["worker_rss_mb"] for r in rows], "^-", label="lane worker")
    left.set(xlabel="jobs in lanes.jobs", ylabel="RSS (MB)", title="Memory against history")
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(jobs, [r["new_ready_s"] for r in rows], "o-", label="gateway, new replica")
    right.plot(jobs, [r["restart_ready_s"] for r in rows], "s--", label="gateway, restarted")
    if all("worker_ready_s" in r for r in rows):
        right.plot(jobs, [r["worker_ready_s"] for r in rows], "^-", label="lane worker")
    right.set(
        xlabel="jobs in lanes.jobs", ylabel="seconds to /readyz", title="Start-up against history"
    )
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_state(cfg: StateConfig, out: Path, settings: Settings | None = None) -> Path:
    """Run every size on one broker (the configured one, else a local one); write
    ``state.md`` and ``state.png`` under ``out``; return the table's path."""
    from services.kafka.local_broker import local_kafka

    out = ensure_dir(out)
    base = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="lanes-bench-state-") as tmp:
        work = Path(tmp)
        with local_kafka(base, work) as bootstrap:
            s = base.model_copy(
                update={"kafka_bootstrap": bootstrap, "models_dir": base.models_path}
            )
            rows = [asyncio.run(_measure(s, cfg, n, work)) for n in cfg.sizes]
    return _write(rows, out)


def _write(rows: list[dict[str, float]], out: Path) -> Path:
    first, last = rows[0], rows[-1]
    headers = [
        "jobs in lanes.jobs",
        "new gateway ready (s)",
        "catch-up (jobs/s)",
        "gateway RSS (MB)",
        "GET p50 (ms)",
        "GET p95 (ms)",
        "list p95 (ms)",
        "restarted ready (s)",
        "restarted RSS (MB)",
        "view file (MB)",
        "worker ready (s)",
        "worker RSS (MB)",
    ]
    table = []
    for r in rows:
        extra = r["new_ready_s"] - first["new_ready_s"]
        rate = r["jobs"] / extra if r["jobs"] and extra > 0 else float("nan")
        table.append(
            [
                int(r["jobs"]),
                r["new_ready_s"],
                f"{rate:,.0f}",
                _rss(r),
                r["get_p50"],
                r["get_p95"],
                r["list_p95"],
                r["restart_ready_s"],
                r["restart_rss_mb"],
                r["view_mb"],
                r.get("worker_ready_s", float("nan")),
                r.get("worker_rss_mb", float("nan")),
            ]
        )
    n0, n1 = f"{int(first['jobs']):,}", f"{int(last['jobs']):,}"
    restarted = last["restart_rss_mb"] - first["restart_rss_mb"]
    growth = [
        f"- gateway RSS growth, {n0} -> {n1} jobs: {_rss(last) - _rss(first):+.1f} MB "
        f"(restarted: {restarted:+.1f} MB); target: at most +50 MB",
        f"- restarted gateway ready at {n1} jobs: {last['restart_ready_s']:.2f} s; "
        "target: within 10 s",
        f"- GET p95 at {n1} jobs: {last['get_p95']:.2f} ms; target: under 5 ms",
    ]
    if "worker_rss_mb" in last:
        growth.append(
            f"- lane worker RSS growth: {last['worker_rss_mb'] - first['worker_rss_mb']:+.1f} MB, "
            f"ready {first['worker_ready_s']:.2f} s -> {last['worker_ready_s']:.2f} s"
        )
        phases = [k for k in last if k.startswith("worker_") and k.endswith("_s")]
        phases = [k for k in phases if k not in ("worker_ready_s", "worker_rss_mb")]
        if phases:
            growth.append(
                "- lane worker start-up by phase (its `worker_ready` log line), s: "
                + "; ".join(
                    f"{int(r['jobs']):,} jobs: "
                    + ", ".join(f"{k[7:-2]} {r.get(k, float('nan')):.1f}" for k in phases)
                    + f", recent jobs read {int(r.get('worker_recent_jobs', 0)):,}"
                    for r in rows
                )
            )
    path = out / "state.md"
    path.write_text(
        "# State against history (`lanes bench state`)\n\n"
        "Each size is a fresh namespace on one broker; the records are realistic finished "
        f"jobs (about {len(_template('succeeded')) / 1024:.1f} KB of JSON each) timestamped "
        "at 100k jobs a day back from now. Each component runs as its own process.\n\n"
        + markdown_table(headers, table)
        + "\n\n"
        + "\n".join(growth)
        + "\n\n![RSS and start-up against jobs](state.png)\n"
    )
    _plot(rows, out / "state.png")
    return path


def _worker_phases(log_path: Path) -> dict[str, float]:
    """The worker's own account of its start-up (its ``worker_ready`` log line): seconds
    per phase and the recent jobs its view read."""
    for line in log_path.read_text(errors="replace").splitlines():
        if '"worker_ready"' in line:
            event = json.loads(line[line.index("{") :])
            return {
                f"worker_{k}": float(v)
                for k, v in event.items()
                if k.endswith("_s") or k == "recent_jobs"
            }
    return {}


def _rss(row: dict[str, float]) -> float:
    """The gateway's larger RSS: once ready, or after the GETs."""
    return max(row["new_rss_mb"], row["rss_after_gets_mb"])
