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
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.apps.bench.burst_fifo import calibrate, run_fifo
from services.apps.bench.burst_lanes import routes_yaml, run_lanes
from services.apps.bench.burst_plan import (
    BurstConfig,
    JobResult,
    overhead_breakdown,
    plan_arrivals,
    spill_summary,
)
from services.apps.bench.burst_schedule import plot_timeline, run_facts, spread
from services.apps.bench.models import bench_settings
from services.apps.bench.stats import ensure_dir, markdown_table, pct

__all__ = ["BurstConfig", "plan_arrivals", "run_burst", "overhead_breakdown"]

RUN_KEYS = (
    "draft_p95_x",
    "final_p95_x",
    "final_p50_x",
    "throughput_x",
    "draft_gain_s",
    "final_required_s",
    "final_paid_s",
    "law_ratio",
    "draft_render_x",
    "final_render_x",
    "idle_waiting_lanes_s",
    "idle_waiting_fifo_s",
)


def run_arm(
    arch: str, cfg: BurstConfig, plan: list[tuple[float, str]], bootstrap: str, workdir: Path
) -> dict[str, Any]:
    import torch

    from services.engines.memory import peak_memory_bytes
    from services.process.logs import configure_logging

    configure_logging("WARNING", json=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    routes = workdir / "routes.yaml"
    settings = bench_settings(
        bootstrap,
        workdir,
        artifact_dir=workdir / arch,
        routes_file=routes,
        device=cfg.device,
        log_level="WARNING",
    )
    runner = run_lanes if arch == "lanes" else run_fifo
    out = asyncio.run(runner(settings, cfg, plan))
    out.setdefault("peak_memory_bytes", peak_memory_bytes(cfg.device))
    return out


# ---- orchestration -------------------------------------------------------------------


def _summary(arch: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    jobs = [JobResult(**j) for j in data["jobs"]]
    done = [j for j in jobs if j.done is not None]
    ends = [j.done for j in jobs if j.done is not None]
    span = (max(ends) - min(j.submitted for j in jobs)) if ends else float("nan")
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


def arrival_plan(
    cfg: BurstConfig, workdir: Path
) -> tuple[list[tuple[float, str]], dict[str, float]]:
    """The routes file in ``workdir``, the engines' measured service times, and the arrival
    plan: a steady trickle at half the pool's capacity, then the burst."""
    (workdir / "routes.yaml").write_text(routes_yaml(cfg))
    service = calibrate(cfg, workdir)
    mean_service = cfg.draft_share * service["draft"] + (1 - cfg.draft_share) * service["final"]
    return plan_arrivals(cfg, 0.5 * cfg.workers / mean_service), service


def run_arm_process(
    arch: str,
    cfg: BurstConfig,
    plan: list[tuple[float, str]],
    bootstrap: str,
    workdir: Path,
    name: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One architecture's run in a process of its own (its peak memory its own)."""
    spec = {"arch": arch, "cfg": asdict(cfg), "plan": plan, "bootstrap": bootstrap,
            "workdir": str(workdir)}  # fmt: skip
    (workdir / "spec.json").write_text(json.dumps(spec))
    result = workdir / f"{(name or arch).replace(' ', '-')}.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "services.apps.bench.burst",
            str(workdir / "spec.json"),
            str(result),
        ],  # fmt: skip
        check=True,
        env=env,
    )
    return json.loads(result.read_text())  # type: ignore[no-any-return]


def run_burst(cfg: BurstConfig, out_dir: Path, runs: int = 3) -> Path:
    from services.config.settings import Settings
    from services.kafka.local_broker import local_kafka

    out_dir = ensure_dir(out_dir)
    with tempfile.TemporaryDirectory(prefix="lanes-bench-") as tmp:
        workdir = Path(tmp)
        plan, service = arrival_plan(cfg, workdir)
        mean_service = cfg.draft_share * service["draft"] + (1 - cfg.draft_share) * service["final"]
        steady_rate = 0.5 * cfg.workers / mean_service  # half the pool's capacity
        with local_kafka(Settings(), workdir) as bootstrap:
            every = [  # back to back on one broker: this machine drifts ~20% between runs
                {
                    arch: run_arm_process(arch, cfg, plan, bootstrap, workdir, f"{arch}-{i}")
                    for arch in ("lanes", "fifo")
                }
                for i in range(runs)
            ]
    all_data = every[0]
    (out_dir / "burst-raw.json").write_text(json.dumps(every))
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
    facts = [run_facts(r["lanes"], r["fifo"], draft_work) for r in every]
    overheads = [
        pct(
            [
                j.overhead_ms
                for j in sorted(
                    (JobResult(**x) for x in r["lanes"]["jobs"]), key=lambda j: j.submitted
                )[: cfg.steady_jobs]
                if j.overhead_ms is not None
            ],
            95,
        )
        for r in every
    ]
    plot_timeline(
        {a: [JobResult(**j) for j in all_data[a]["jobs"]] for a in ("lanes", "fifo")},
        out_dir / "burst-timeline.png",
        "Run 1: what each worker rendered when, and how many jobs waited to start",
    )
    targets = [
        ("draft p95, Lanes / FIFO", [f["draft_p95_x"] for f in facts], "≤ 0.15", 0.15),
        ("final p95, Lanes / FIFO", [f["final_p95_x"] for f in facts], "≤ 1.10", 1.10),
        (
            "finals' extra mean wait / what the conservation law requires",
            [f["law_ratio"] for f in facts],
            "≤ 1.20",
            1.20,
        ),
        ("throughput, Lanes / FIFO", [f["throughput_x"] for f in facts], "≥ 1.00", -1.0),
        ("orchestration overhead p95, steady phase (ms)", overheads, "≤ 10", 10.0),
    ]

    def met(values: list[float], bound: float) -> bool:
        ok = sorted(v for v in values if v == v)
        if not ok:
            return False
        mid = ok[len(ok) // 2] if len(ok) % 2 else (ok[len(ok) // 2 - 1] + ok[len(ok) // 2]) / 2
        return mid >= -bound if bound < 0 else mid <= bound

    runs_rows: list[list[object]] = [
        [i + 1, *(round(f[k], 3) for k in RUN_KEYS), round(overheads[i], 1)]
        for i, f in enumerate(facts)
    ]
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
        f"Engines: `{cfg.preset}` random-weight SD pipeline on `{cfg.device}`, "
        f"{cfg.width}x{cfg.height}; "
        f"draft {cfg.draft_steps} steps, final {cfg.final_steps} steps "
        f"with CFG {cfg.final_guidance}. "
        f"Measured service time one at a time: draft {service['draft'] * 1000:.0f} ms, "
        f"final {service['final'] * 1000:.0f} ms; a draft in a batch of {cfg.draft_batch}: "
        f"{service['draft_batched'] * 1000:.0f} ms per image ({batch_gain:.2f}x the throughput "
        f"of one at a time).",
        f"Plan: {cfg.jobs} jobs ({cfg.draft_share:.0%} draft), {cfg.steady_jobs} "
        "at the steady rate "
        f"{steady_rate:.2f} jobs/s (half the pool's capacity), "
        f"then a burst at {cfg.burst_factor:g}x. "
        f"{cfg.workers} workers in both: Lanes runs {cfg.draft_workers} on the draft lane (cap "
        f"{cfg.draft_cap}, batch {cfg.draft_batch}) and {cfg.workers - cfg.draft_workers} "
        "on the final "
        f"lane (cap {cfg.final_cap}, batch {cfg.final_batch}), one process each "
        f"(batch caps after each worker's start-up profile: {caps}), "
        f"over Kafka; the "
        f"baseline is one in-memory FIFO queue in front of {cfg.workers} workers "
        "(no broker hops at all).",
        "",
        table,
        "",
        "End-to-end: submitted until the render event was read back from Kafka (Lanes) / the "
        "render was stored (FIFO). Peak memory: the largest worker process (Lanes) / the one "
        "process holding both workers (FIFO). Overhead: end-to-end minus inference minus "
        "the time the job "
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
        f"## Scheduling over {runs} back-to-back runs (same plan, same broker)",
        "",
        "Conservation law (Kleinrock): over the same arrivals every work-conserving "
        "scheduler keeps ρ_d·W_d + ρ_f·W_f constant, so the drafts' gain in mean wait G "
        f"costs finals at least (ρ_d/ρ_f)·G (drafts are {draft_work:.0%} of the work here). "
        "Wait: end-to-end less the job's own render. Render ×: one image's render time, "
        "Lanes over FIFO, on the same cores (above 1: the broker, router and gateway take "
        "CPU from the renders, which a GPU host does not pay). Idle while waiting: "
        "device-seconds with a worker free and a job not yet started.",
        "",
        markdown_table(
            [
                "run",
                "draft p95 ×",
                "final p95 ×",
                "final p50 ×",
                "throughput ×",
                "drafts' gain s",
                "finals required s",
                "finals paid s",
                "paid / required",
                "draft render ×",
                "final render ×",
                "idle waiting Lanes s",
                "idle waiting FIFO s",
                "overhead p95 ms (steady)",
            ],
            runs_rows,
        ),
        "",
        "| target (median of the runs) | median (min–max) | met |",
        "| --- | --- | --- |",
        *[
            f"| {name} {bound_text} | {spread(values)} | {'yes' if met(values, b) else 'NO'} |"
            for name, values, bound_text, b in targets
        ],
        "",
        "![timeline](burst-timeline.png)",
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
    data = run_arm(spec["arch"], cfg, plan, spec["bootstrap"], Path(spec["workdir"]))
    Path(out_path).write_text(json.dumps(data))


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
