"""The `lanes` command."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Lanes: image generation on Kafka",
)
run_app = typer.Typer(no_args_is_help=True, help="Run one component in the foreground")
schemas_app = typer.Typer(no_args_is_help=True, help="Event schemas")
kafka_app = typer.Typer(no_args_is_help=True, help="Local Apache Kafka")
models_app = typer.Typer(no_args_is_help=True, help="Model checkpoints")
ops_app = typer.Typer(no_args_is_help=True, help="Operate lanes: model versions, canaries, caps")
app.add_typer(ops_app, name="ops")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (write a Markdown table and a PNG)")
app.add_typer(bench_app, name="bench")
app.add_typer(run_app, name="run")
app.add_typer(schemas_app, name="schemas")
app.add_typer(kafka_app, name="kafka")
app.add_typer(models_app, name="models")
k8s_app = typer.Typer(no_args_is_help=True, help="Kubernetes deployment")
webhooks_app = typer.Typer(no_args_is_help=True, help="Webhook deliveries")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(k8s_app, name="k8s")


def _settings():  # noqa: ANN202 - imported lazily so `lanes --help` stays fast
    from services.config.settings import Settings
    from services.process.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return settings


@app.command()
def up() -> None:
    """Start Kafka (if none answers), create topics and run every component."""
    from services.apps.supervisor import run_stack

    asyncio.run(run_stack(_settings()))


@run_app.command("gateway")
def run_gateway() -> None:
    import uvicorn

    from services.apps.gateway import create_app

    settings = _settings()
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level="warning",
    )


# Consumer groups whose module's ``run(settings)`` is all a process needs.
CONSUMER_GROUPS = {
    "router": "router",
    "deferred": "deferred",
    "jobs": "jobs",
    "verifier": "verifier",
    "webhooks": "webhooks",
    "webhook-retries": "webhook_retries",
    "control": "control",
}


def _group_command(module: str) -> Callable[[], None]:
    def command() -> None:
        import importlib

        asyncio.run(importlib.import_module(f"consumers.{module}").run(_settings()))

    command.__doc__ = f"Run one member of the {module} consumer group (consumers/{module}.py)."
    return command


for _name, _module in CONSUMER_GROUPS.items():
    run_app.command(_name)(_group_command(_module))


@run_app.command("worker")
def run_worker(
    lane: str = typer.Option(..., help="the lane this worker serves"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 ..."),
    instance: str | None = typer.Option(None, help="this instance's name (default: host-pid-lane)"),
) -> None:
    from consumers import lane_worker
    from services.process.tuning import tune_worker_process

    settings = _settings()
    if device:
        settings = settings.model_copy(update={"device": device})
    tune_worker_process(settings.gil_switch_interval_ms)
    asyncio.run(lane_worker.run(settings, lane, instance=instance))


@app.command()
def submit(
    prompt: str,
    intent: str = typer.Option("draft", help="draft or final"),
    text: str | None = typer.Option(None, help="exact text the image must show"),
    webhook_url: str | None = typer.Option(None),
    idempotency_key: str | None = typer.Option(None),
    wait: bool = typer.Option(False, help="follow the job until it ends"),
    timeout: float = typer.Option(300.0, help="seconds to wait with --wait"),
    gateway: str = typer.Option("http://127.0.0.1:8000", envvar="LANES_GATEWAY_URL"),
) -> None:
    """Submit a generation request through the gateway."""
    import httpx

    body = {"prompt": prompt, "intent": intent}
    if text is not None:
        body["text"] = text
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with httpx.Client(base_url=gateway, timeout=30) as client:
        resp = client.post("/v1/generations", json=body, headers=headers)
        if resp.status_code != 202:
            typer.echo(f"refused ({resp.status_code}): {resp.text}", err=True)
            raise typer.Exit(2)
        job_id = resp.json()["job_id"]
        typer.echo(f"job {job_id} queued")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        last = None
        job: dict = {}
        while time.monotonic() < deadline:
            r = client.get(f"/v1/generations/{job_id}")
            if r.status_code == 200:
                job = r.json()
                if job["status"] != last:
                    last = job["status"]
                    typer.echo(f"  {last}")
                if last in ("succeeded", "failed", "canceled"):
                    break
            time.sleep(0.3)
        else:
            typer.echo(f"still {last} after {timeout}s", err=True)
            raise typer.Exit(1)
    typer.echo(json.dumps(job, indent=2))
    delivered = job.get("delivered") or (job.get("artifacts") or [None])[-1]
    if delivered:
        from urllib.parse import urlparse

        typer.echo(f"image: {urlparse(delivered['uri']).path}")
    if job.get("verification"):
        v = job["verification"]
        typer.echo(
            f"verification: expected {v['expected']!r}, read {v['read']!r}, "
            f"score {v['score']}, passed {v['passed']}"
        )
    raise typer.Exit(0 if job["status"] == "succeeded" else 1)


@schemas_app.command("export")
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema per event and record into DIRECTORY."""
    from schemas.export import export_schemas

    for path in export_schemas(directory):
        typer.echo(str(path))


@kafka_app.command("start")
def kafka_start(port: int = 9092) -> None:
    """Run the local broker in the foreground until Ctrl-C."""
    import signal

    from services.kafka.local_broker import KafkaProcess

    settings = _settings()
    kafka = KafkaProcess(
        settings.state_dir.resolve() / "kafka", port=port, controller_port=port + 1
    )
    kafka.start()
    typer.echo(f"Kafka answering on {kafka.bootstrap}; log: {kafka.log_path}")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        kafka.stop()


@kafka_app.command("topics")
def kafka_topics() -> None:
    """Create every topic the stack needs (idempotent)."""
    from services.apps.supervisor import prepare_cluster

    asyncio.run(prepare_cluster(_settings()))


@webhooks_app.command("replay")
def webhooks_replay(
    key: list[str] | None = typer.Option(None, help="JOB_ID:EVENT to replay (repeatable)"),
    all_: bool = typer.Option(False, "--all", help="replay every dead-lettered webhook"),
) -> None:
    """Send dead-lettered webhooks again (same webhook-id, fresh signature, attempts anew)."""
    from services.apps.webhook_replay import replay

    if not key and not all_:
        raise typer.BadParameter("name --key JOB_ID:EVENT (repeatable) or --all")
    sent = asyncio.run(replay(_settings(), None if all_ else set(key or [])))
    for k in sent:
        typer.echo(f"replaying {k}")
    typer.echo(f"{len(sent)} webhook(s) queued for delivery")
    if key and len(sent) < len(set(key)):
        raise typer.Exit(1)


@k8s_app.command("manifests")
def k8s_manifests(
    out: Path | None = typer.Option(None, help="write here (default: stdout)"),
) -> None:
    """Deployments per lane (nvidia.com/gpu), KEDA ScaledObjects on lag, CPU components."""
    from services.apps.k8s_manifests import render
    from services.config.routes import load_routes, routes_text
    from services.config.settings import Settings

    settings = Settings()
    text = render(load_routes(settings.routes_file), routes_text(settings.routes_file))
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(str(out))


@models_app.command("build-tiny")
def models_build_tiny(directory: Path, seed: int = 0) -> None:
    """Write a tiny random-weight diffusers checkpoint (no download) into DIRECTORY."""
    from services.engines.tiny import TinyConfig, build_tiny_checkpoint

    typer.echo(str(build_tiny_checkpoint(directory, TinyConfig(seed=seed))))


@app.command()
def ab(
    engines: str = typer.Option(..., help="comma-separated model names from the routes file"),
    prompts: Path = typer.Option(..., help="a text file, one prompt per line"),
    out: Path = typer.Option(Path("results/ab.html"), help="the HTML report"),
    intent: str = typer.Option("draft", help="which intent's lane settings to use"),
) -> None:
    """Run identical prompts through the pipeline on each engine; write an HTML report."""
    from services.apps.ab import read_prompts, run_ab

    names = [e.strip() for e in engines.split(",") if e.strip()]
    if len(names) < 2:
        raise typer.BadParameter("name at least two engines, e.g. --engines tiny-sd,tiny-sd-b")
    path = asyncio.run(run_ab(_settings(), names, read_prompts(prompts), out, intent))
    typer.echo(f"report: {path.resolve()}")


def _ops(action: str, lane: str, **fields: object) -> None:
    import getpass

    from schemas.control import OpsCommand
    from services.apps.ops_client import send_and_wait

    command = OpsCommand(
        action=action,
        lane=lane,
        issuer=getpass.getuser(),  # type: ignore[arg-type]
        **{k: v for k, v in fields.items() if v is not None},
    )
    result = asyncio.run(send_and_wait(_settings(), command))
    if result.outcome == "applied":
        typer.echo(f"{action} {lane}: applied (revision {result.revision})")
    else:
        typer.echo(f"{action} {lane}: rejected: {result.reason}", err=True)
        raise typer.Exit(1)


LANE = typer.Option(..., "--lane", help="the lane to act on")


MODEL = typer.Option(..., help="a model from the routes file, or a new one's name")
VERSION = typer.Option(None, help="the version (required with --path or --tiny-seed)")
PATH = typer.Option(None, help="a local diffusers checkpoint directory for this version")
TINY_SEED = typer.Option(None, help="a tiny random-weight build with this seed")


@ops_app.command("deploy")
def ops_deploy(
    lane: str = LANE,
    model: str = MODEL,
    version: str | None = VERSION,
    path: str | None = PATH,
    tiny_seed: int | None = TINY_SEED,
    reason: str | None = None,
) -> None:
    """Make MODEL the lane's stable version (the current one is kept for rollback)."""
    _ops(
        "deploy", lane, model=model, version=version, path=path, tiny_seed=tiny_seed, reason=reason
    )


@ops_app.command("canary")
def ops_canary(
    lane: str = LANE,
    model: str = MODEL,
    version: str | None = VERSION,
    path: str | None = PATH,
    tiny_seed: int | None = TINY_SEED,
    percent: int = typer.Option(..., min=1, max=99),
    reason: str | None = None,
) -> None:
    """Send PERCENT of the lane's jobs (chosen by job id) to MODEL."""
    _ops(
        "canary",
        lane,
        model=model,
        version=version,
        path=path,
        tiny_seed=tiny_seed,
        percent=percent,
        reason=reason,
    )


@ops_app.command("promote")
def ops_promote(lane: str = LANE, reason: str | None = None) -> None:
    """Make the canary the stable version."""
    _ops("promote", lane, reason=reason)


@ops_app.command("rollback")
def ops_rollback(lane: str = LANE, reason: str | None = None) -> None:
    """Drop the canary, or return to the previous stable version."""
    _ops("rollback", lane, reason=reason)


@ops_app.command("set")
def ops_set(lane: str = LANE, max_concurrency: int | None = None, steps: int | None = None) -> None:
    """Change the lane's per-GPU concurrency cap and/or sample steps."""
    _ops("set", lane, max_concurrency=max_concurrency, sample_steps=steps)


@ops_app.command("pause")
def ops_pause(lane: str = LANE, reason: str | None = None) -> None:
    _ops("pause", lane, reason=reason)


@ops_app.command("resume")
def ops_resume(lane: str = LANE) -> None:
    _ops("resume", lane)


@ops_app.command("restart")
def ops_restart(lane: str = LANE) -> None:
    """Rolling restart of the lane's workers."""
    _ops("restart", lane)


@ops_app.command("status")
def ops_status() -> None:
    """Each lane's desired state, and each worker instance's rollout, instance by instance."""
    from services.config.routes import load_routes
    from services.domain.rollout import RolloutView

    settings = _settings()
    view = RolloutView(settings, load_routes(settings.routes_file))
    asyncio.run(view.load())
    for item in view.lanes():
        d = item.desired
        canary = f"{d.canary.target.label} @ {d.canary.percent}%" if d.canary else "-"
        typer.echo(
            f"{item.lane}: rev {d.revision} stable {d.stable.label} canary {canary} "
            f"previous {d.previous.label if d.previous else '-'}"
            f"{' PAUSED' if d.paused else ''} cap {d.max_concurrency or 'routes'} "
            f"steps {d.sample_steps or 'routes'} restart-gen {d.restart_generation} "
            f"{'converged' if item.converged else 'rolling out'}"
            f"{f' ({d.actor}: {d.reason})' if d.revision else ''}"
        )
        for inst in item.instances:
            s = inst.status
            flags = [] if inst.live else ["gone"]
            if s.serves == "spill":
                flags.append("(serves the spill queue)")
            if not inst.current:
                flags.append(f"at rev {s.applied_revision}")
            flags += [f"failed to load {k}: {v}" for k, v in s.load_errors.items()]
            canary_part = f" + {s.canary.label} @ {s.canary_percent}%" if s.canary else ""
            typer.echo(
                f"  {s.instance:32} {s.health:10} {s.stable.label if s.stable else '-'}"
                f"{canary_part} in-flight {s.in_flight} done {s.jobs_done} gen "
                f"{s.restart_generation} {' '.join(flags)}"
            )
        if not item.instances:
            typer.echo("  (no worker has reported)")


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
        2, help="Lanes: finals waiting before new ones may spill to the draft lane's idle workers"
    ),
    no_spill: bool = typer.Option(
        False, "--no-spill", help="Lanes: no spill; each lane's workers serve only their own lane"
    ),
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
    path = run_burst(cfg, out)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
