"""What tracing costs the job path: the burst benchmark's Lanes arm run three times in one
go on the same arrival plan: tracing off; on at ratio 1.0, exporting to a real Jaeger; and
on at ratio 1.0 with the collector named but dead (nothing listens). Writes tracing.md
(table) and tracing.png (latency CDFs) into the results folder.

    lanes bench tracing --out results/
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from services.apps.bench.burst import _plot, _summary, arrival_plan, run_arm_process
from services.apps.bench.burst_plan import BurstConfig, JobResult
from services.apps.bench.stats import ensure_dir, markdown_table, pct

__all__ = ["run_tracing_bench"]

ARMS = ("off", "traced", "dead collector")


def _arm_env(arm: str, jaeger_otlp: str, dead: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if arm != "off":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = jaeger_otlp if arm == "traced" else dead
        env["LANES_TRACE_SAMPLE_RATIO"] = "1.0"
    return env


def run_tracing_bench(cfg: BurstConfig, out_dir: Path) -> Path:
    from services.config.settings import Settings
    from services.kafka.local_broker import free_port, local_kafka
    from services.process.local_jaeger import JaegerProcess

    out_dir = ensure_dir(out_dir)
    with tempfile.TemporaryDirectory(prefix="lanes-bench-") as tmp:
        workdir = Path(tmp)
        plan, _ = arrival_plan(cfg, workdir)
        jaeger = JaegerProcess(workdir / "jaeger", free_port(), free_port(), free_port())
        jaeger.start()
        dead = f"http://127.0.0.1:{free_port()}"  # named, never listening
        try:
            with local_kafka(Settings(), workdir) as bootstrap:
                all_data = {
                    arm: run_arm_process(
                        "lanes",
                        cfg,
                        plan,
                        bootstrap,
                        workdir,
                        name=arm,
                        env=_arm_env(arm, jaeger.otlp_endpoint, dead),
                    )  # fmt: skip
                    for arm in ARMS
                }
        finally:
            jaeger.stop()
    (out_dir / "tracing-raw.json").write_text(json.dumps(all_data))
    _plot(all_data, out_dir / "tracing.png")
    rows = []
    for arm in ARMS:
        (summary,) = [r for r in _summary(arm, all_data[arm]) if r["intent"] == "all"]
        jobs = sorted((JobResult(**j) for j in all_data[arm]["jobs"]), key=lambda j: j.submitted)
        steady = [j.overhead_ms for j in jobs[: cfg.steady_jobs] if j.overhead_ms is not None]
        rows.append({**summary, "steady_overhead_p95_ms": pct(steady, 95)})
    by = {r["arch"]: r for r in rows}
    off, traced, dead_row = by["off"], by["traced"], by["dead collector"]
    checks = [
        (
            "dead collector: job p95 within 5% of tracing off",
            f"{dead_row['p95_s'] / off['p95_s']:.3f}×",
            dead_row["p95_s"] <= 1.05 * off["p95_s"],
        ),
        (
            "traced at ratio 1.0: orchestration overhead p95, steady phase, against off",
            f"{traced['steady_overhead_p95_ms']:.1f} ms vs {off['steady_overhead_p95_ms']:.1f} ms",
            True,
        ),
        (
            "0 lost jobs in every arm",
            str(sum(r["lost"] for r in rows)),
            not any(r["lost"] for r in rows),
        ),
    ]
    table = markdown_table(
        [
            "tracing",
            "jobs",
            "p50 s",
            "p95 s",
            "p99 s",
            "throughput jobs/s",
            "overhead p95 ms (steady)",
            "overhead p95 ms (all)",
            "lost",
        ],  # fmt: skip
        [
            [
                r["arch"],
                r["jobs"],
                r["p50_s"],
                r["p95_s"],
                r["p99_s"],
                r["throughput_jps"],
                r["steady_overhead_p95_ms"],
                r["overhead_p95_ms"],
                r["lost"],
            ]  # fmt: skip
            for r in rows
        ],
    )
    text = (
        "# Tracing cost\n\n"
        f"The burst benchmark's Lanes arm ({cfg.jobs} jobs, {cfg.workers} workers, preset "
        f"{cfg.preset}, {cfg.device}) three times on one arrival plan: tracing off; every "
        "hop traced (ratio 1.0) to Jaeger; the same with the collector named but dead.\n\n"
        f"{table}\n\n"
        + markdown_table(["check", "measured", "ok"], [list(c) for c in checks])
        + "\n\n![latency CDFs](tracing.png)\n"
    )
    path = out_dir / "tracing.md"
    path.write_text(text)
    return path
