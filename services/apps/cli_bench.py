"""`lanes bench ...`: the benchmarks (each writes a Markdown table and a PNG)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["bench_app"]

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (write a Markdown table and a PNG)")


@bench_app.command("burst")
def bench_burst(
    out: Path = typer.Option(Path("results"), help="results folder"),
    jobs: int = typer.Option(72, help="jobs in all, steady phase included"),
    steady_jobs: int = typer.Option(24, help="jobs at the steady rate before the burst"),
    draft_share: float = 0.75,
    burst_factor: float = 10.0,
    draft_steps: int = 1,
    final_steps: int = 20,
    width: int = 256,
    height: int = 256,
    workers: int = typer.Option(2, help="workers in both architectures"),
    draft_workers: int = typer.Option(1, help="Lanes: workers on the draft lane (rest: final)"),
    preset: str = typer.Option(
        "tiny", help="engine sizes: tiny | tiny-xl | sd-turbo-class | sdxl-class"
    ),
    device: str = "cpu",
    spill_after_lag: int = typer.Option(
        4, help="Lanes: drafts waiting before new ones may spill to the final lane's workers"
    ),
    final_spill_after_lag: int = typer.Option(
        0, help="Lanes: finals waiting before new ones may spill to the draft lane's idle workers"
    ),
    no_spill: bool = typer.Option(
        False, "--no-spill", help="Lanes: no spill; each lane's workers serve only their own lane"
    ),
    runs: int = typer.Option(3, help="back-to-back runs of both architectures (their spread)"),
) -> None:
    """Burst of mixed draft/final prompts: Lanes against one FIFO queue, side by side."""
    if not 1 <= draft_workers < workers:
        raise typer.BadParameter("each lane needs a worker: 1 <= --draft-workers < --workers")
    from services.apps.bench.burst import BurstConfig, run_burst

    cfg = BurstConfig(
        jobs=jobs,
        steady_jobs=steady_jobs,
        draft_share=draft_share,
        burst_factor=burst_factor,
        draft_steps=draft_steps,
        final_steps=final_steps,
        width=width,
        height=height,
        workers=workers,
        draft_workers=draft_workers,
        preset=preset,
        device=device,
        spill_after_lag=None if no_spill else spill_after_lag,
        final_spill_after_lag=None if no_spill else final_spill_after_lag,
    )
    path = run_burst(cfg, out, runs=runs)
    typer.echo(path.read_text())


@bench_app.command("tracing")
def bench_tracing(
    out: Path = typer.Option(Path("results"), help="results folder"),
    jobs: int = typer.Option(48, help="jobs in all, steady phase included"),
    steady_jobs: int = typer.Option(24, help="jobs at the steady rate before the burst"),
) -> None:
    """What tracing costs: the burst's Lanes arm with tracing off, on (ratio 1.0, to
    Jaeger) and on with a dead collector, side by side."""
    from services.apps.bench.burst import BurstConfig
    from services.apps.bench.tracing_cost import run_tracing_bench

    cfg = BurstConfig(jobs=jobs, steady_jobs=steady_jobs, workers=2, draft_workers=1)
    path = run_tracing_bench(cfg, out)
    typer.echo(path.read_text())


@bench_app.command("cascade")
def bench_cascade(
    out: Path = typer.Option(Path("results"), help="results folder"),
    preset: str = typer.Option(
        "tiny", help="engine sizes: tiny | tiny-xl | sd-turbo-class | sdxl-class"
    ),
    device: str = "cpu",
    draft: int = typer.Option(256, help="draft size (px)"),
    target: int = typer.Option(512, help="delivered size (px)"),
    full_steps: int = 20,
) -> None:
    """Compute per delivered image: few-step draft + batched refine vs one full render."""
    from services.apps.bench.cascade import CascadeConfig, run_cascade

    cfg = CascadeConfig(
        preset=preset, device=device, draft_size=draft, target_size=target, full_steps=full_steps
    )
    typer.echo(run_cascade(cfg, out).read_text())


@bench_app.command("openai")
def bench_openai(
    out: Path = typer.Option(Path("results"), help="results folder"),
    rounds: int = typer.Option(20, help="jobs per arm"),
    intent: str = typer.Option("draft", help="the jobs' intent"),
) -> None:
    """The OpenAI-compatible sync call against /v1/generations with polling, same jobs."""
    from services.apps.bench.openai_latency import OpenAILatencyConfig, run_openai_latency

    cfg = OpenAILatencyConfig(rounds=rounds, intent=intent)
    typer.echo(run_openai_latency(cfg, out).read_text())


@bench_app.command("state")
def bench_state(
    out: Path = typer.Option(Path("results"), help="results folder"),
    sizes: str = typer.Option("0,100000,1000000", help="jobs in lanes.jobs, comma-separated"),
    gets: int = typer.Option(2000, help="GET requests per size"),
    per_day: int = typer.Option(100_000, help="history pace: job records per day"),
    worker_lane: str = typer.Option("draft", help="the lane worker to start ('' for none)"),
) -> None:
    """Gateway and lane-worker RSS, time to ready and GET latency against jobs stored."""
    from services.apps.bench.state import StateConfig, run_state

    cfg = StateConfig(
        sizes=[int(x) for x in sizes.split(",") if x.strip()],
        gets=gets,
        per_day=per_day,
        worker_lane=worker_lane or None,
    )
    path = run_state(cfg, out)
    typer.echo(path.read_text())


@bench_app.command("chaos")
def bench_chaos(
    out: Path = typer.Option(Path("results"), help="results folder"),
    duration_s: float = typer.Option(150.0, help="seconds of load and kills"),
    rate: float = typer.Option(1.0, help="jobs submitted per second"),
    kill_every_s: float = typer.Option(15.0, help="a random component is killed this often"),
    broker_kill_at_s: float = typer.Option(60.0, help="when one broker is killed"),
    broker_down_s: float = typer.Option(20.0, help="how long it stays down"),
    seed: int = 7,
    dynamic: bool = typer.Option(
        False, "--dynamic", help="dynamic group membership (default: static, per instance id)"
    ),
    kill_order: str = typer.Option("", help="components to kill in turn, comma-separated"),
) -> None:
    """A job stream with webhooks on a 3-broker cluster while components and a broker are
    killed: lost jobs, duplicate webhooks, p95 with and without faults."""
    from services.apps.bench.chaos import ChaosConfig, run_chaos

    cfg = ChaosConfig(
        duration_s=duration_s,
        rate_per_s=rate,
        kill_every_s=kill_every_s,
        broker_kill_at_s=broker_kill_at_s,
        broker_down_s=broker_down_s,
        seed=seed,
        static_members=not dynamic,
        kill_order=[n for n in kill_order.split(",") if n] or None,
    )
    typer.echo(run_chaos(cfg, out).read_text())
