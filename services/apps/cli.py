"""The `lanes` command."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from services.apps.cli_bench import bench_app
from services.apps.cli_keys import keys_app
from services.apps.cli_ops import ops_app
from services.apps.cli_settings import (
    component_settings,
    settings_from_env,
    wait_for_stop_signal,
)

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
s3_app = typer.Typer(no_args_is_help=True, help="Local S3 server (SeaweedFS)")
models_app = typer.Typer(no_args_is_help=True, help="Model checkpoints")
app.add_typer(ops_app, name="ops")
app.add_typer(keys_app, name="keys")
app.add_typer(bench_app, name="bench")
app.add_typer(run_app, name="run")
app.add_typer(schemas_app, name="schemas")
app.add_typer(kafka_app, name="kafka")
app.add_typer(s3_app, name="s3")
app.add_typer(models_app, name="models")
k8s_app = typer.Typer(no_args_is_help=True, help="Kubernetes deployment")
settings_app = typer.Typer(no_args_is_help=True, help="The LANES_* settings")
app.add_typer(settings_app, name="settings")
webhooks_app = typer.Typer(no_args_is_help=True, help="Webhook deliveries")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(k8s_app, name="k8s")
alerts_app = typer.Typer(no_args_is_help=True, help="Prometheus alerting rules")
app.add_typer(alerts_app, name="alerts")


@app.command()
def up() -> None:
    """Start Kafka (if none answers), create topics and run every component."""
    from services.apps.supervisor import run_stack

    asyncio.run(run_stack(settings_from_env()))


@run_app.command("gateway")
def run_gateway() -> None:
    import uvicorn

    from services.apps.gateway import create_app

    settings = component_settings("gateway")
    uvicorn.run(
        create_app(settings),
        host=settings.gateway.host,
        port=settings.gateway.port,
        log_level="warning",
    )


def _group_command(name: str) -> Callable[[], None]:
    def command() -> None:
        from services.apps.registry import consumer

        asyncio.run(consumer(name).runner()(component_settings(name)))

    command.__doc__ = f"Run one member of the {name} consumer group."
    return command


def _register_consumers() -> None:
    from services.apps.registry import CONSUMERS

    for comp in CONSUMERS:
        run_app.command(comp.name)(_group_command(comp.name))


_register_consumers()


@run_app.command("worker")
def run_worker(
    lane: str = typer.Option(..., help="the lane this worker serves"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 ..."),
    instance: str | None = typer.Option(None, help="this instance's name (default: host-pid-lane)"),
) -> None:
    from consumers import lane_worker
    from services.process.tuning import tune_worker_process

    settings = component_settings(f"worker-{lane}")
    if device:
        settings = settings.model_copy(update={"device": device})
    tune_worker_process(settings.worker.gil_switch_interval_ms)
    asyncio.run(lane_worker.run(settings, lane, instance=instance))


@app.command()
def submit(
    prompt: str,
    intent: str = typer.Option("draft", help="preview, draft or final"),
    text: str | None = typer.Option(None, help="exact text the image must show"),
    webhook_url: str | None = typer.Option(None),
    idempotency_key: str | None = typer.Option(None),
    wait: bool = typer.Option(False, help="follow the job until it ends"),
    timeout: float = typer.Option(300.0, help="seconds to wait with --wait"),
    gateway: str = typer.Option("http://127.0.0.1:8000", envvar="LANES_GATEWAY_URL"),
) -> None:
    """Submit a generation request through the gateway (with LANES_API_KEY, or the key
    `lanes up` saved under the state directory)."""
    import httpx

    from services.apps.local_keys import local_key

    key = local_key(settings_from_env())
    if key is None:
        typer.echo("no API key: set LANES_API_KEY (or run `lanes up` once)", err=True)
        raise typer.Exit(2)

    body = {"prompt": prompt, "intent": intent}
    if text is not None:
        body["text"] = text
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gateway, timeout=30, headers=auth) as client:
        resp = client.post("/v1/generations", json=body, headers=headers)
        if resp.status_code != 202:
            typer.echo(f"refused ({resp.status_code}): {resp.text}", err=True)
            raise typer.Exit(2)
        job_id = resp.json()["job_id"]
        typer.echo(f"job {job_id} queued")
        if not wait:
            return
        job = _follow(client, job_id, timeout)
    typer.echo(json.dumps(job, indent=2))
    delivered = job.get("delivered") or (job.get("artifacts") or [None])[-1]
    if delivered:
        typer.echo(f"image: {delivered['uri']}")
    if job.get("trace_id"):
        typer.echo(f"trace: {job['trace_id']}")
    if job.get("cost_usd") is not None:
        typer.echo(f"cost: ${job['cost_usd']:.4f} ({job.get('model')} on lane {job.get('lane')})")
    if job.get("failure_reason"):
        typer.echo(f"failed: {job['failure_reason']}: {job.get('error')}")
    if job.get("verification"):
        v = job["verification"]
        typer.echo(
            f"verification: expected {v['expected']!r}, read {v['read']!r}, "
            f"score {v['score']}, passed {v['passed']}"
        )
    raise typer.Exit(0 if job["status"] == "succeeded" else 1)


def _follow(client: Any, job_id: str, timeout: float) -> dict[str, Any]:
    """The job's events (SSE) until it ends: each status on its line, the render's steps
    as a progress bar; reconnects with Last-Event-ID if the stream drops."""
    import httpx

    from services.apps.job_events import parse_sse

    deadline = time.monotonic() + timeout
    last_id = 0
    bar_open = False
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(last_id)} if last_id else {}
        try:
            with client.stream(
                "GET", f"/v1/generations/{job_id}/events", headers=headers, timeout=60
            ) as resp:
                for ev in parse_sse(resp.iter_lines()):
                    last_id = ev.id or last_id
                    if ev.event == "progress":
                        step, steps = ev.data["step"], ev.data["steps"]
                        done = int(30 * step / steps)
                        bar = "#" * done + "." * (30 - done)
                        typer.echo(f"\r  {ev.data['stage']:9} [{bar}] {step}/{steps}", nl=False)
                        bar_open = True
                        continue
                    if bar_open:
                        typer.echo("")
                        bar_open = False
                    if ev.event == "status":
                        position = ev.data.get("queue_position")
                        typer.echo(
                            f"  {ev.data['status']}"
                            + (f" (#{position} in queue)" if position else "")
                            + (f": {ev.data['waiting']}" if ev.data.get("waiting") else "")
                        )
                    elif ev.event == "end":
                        return dict(ev.data)
                    if time.monotonic() > deadline:
                        break
        except httpx.HTTPError:
            time.sleep(0.5)  # the gateway restarted: resume where the stream stopped
    typer.echo(f"still running after {timeout}s", err=True)
    raise typer.Exit(1)


@settings_app.command("reference")
def settings_reference(
    out: Path | None = typer.Option(None, help="write here, else print"),
) -> None:
    """Every LANES_* variable by concern, with its default and meaning (docs/settings.md)."""
    from services.apps.settings_reference import render

    text = render()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")


@schemas_app.command("export")
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema per event and record into DIRECTORY."""
    from schemas.export import export_schemas

    for path in export_schemas(directory):
        typer.echo(str(path))


@kafka_app.command("start")
def kafka_start(
    port: int = 9092,
    brokers: int = typer.Option(
        1, min=1, max=9, help="nodes: 3 gives replication 3, min.insync.replicas 2"
    ),
    host: str = typer.Option(
        "127.0.0.1", help="the address to listen on and advertise (this host's own, for a fleet)"
    ),
    secure: bool = typer.Option(
        False,
        help="SASL_SSL (SCRAM-SHA-512) with a local CA, mTLS controllers, ACLs: a user "
        "per component, each with only its rights",
    ),
) -> None:
    """Run the local broker (or a cluster of --brokers nodes on port, port+2, ...) in the
    foreground until Ctrl-C, and print the variables that point the stack at it."""
    from services.kafka.local_broker import KafkaCluster, KafkaProcess
    from services.kafka.local_security import LocalSecurity

    if host != "127.0.0.1" and (secure or brokers > 1):
        raise typer.BadParameter("--host is for one PLAINTEXT node (a fleet test on one machine)")
    settings = settings_from_env()
    home = settings.storage.state_dir.resolve() / ("kafka-secure" if secure else "kafka")
    security = None
    if secure:
        from services.apps.kafka_acls import principals
        from services.config.routes import load_routes

        security = LocalSecurity(home / "security")
        security.ensure(c.principal for c in principals(load_routes(settings.routes_file)))
    if brokers == 1:
        kafka = KafkaProcess(
            home, port=port, controller_port=port + 1, security=security, host=host
        )
        kafka.start()
        bootstrap, stop = kafka.bootstrap, kafka.stop
        env = {"LANES_KAFKA_BOOTSTRAP": bootstrap}
        typer.echo(f"Kafka answering on {bootstrap}; log: {kafka.log_path}")
    else:
        cluster = KafkaCluster(home / "cluster", size=brokers, base_port=port, security=security)
        cluster.start()
        bootstrap, stop = cluster.bootstrap, cluster.stop
        env = {
            "LANES_KAFKA_BOOTSTRAP": bootstrap,
            "LANES_TOPIC_REPLICATION_FACTOR": str(cluster.replication),
            "LANES_TOPIC_MIN_INSYNC_REPLICAS": str(cluster.min_isr),
        }
        typer.echo(f"Kafka cluster of {brokers} answering on {bootstrap}; logs under {home}")
    if security is not None:
        env.update(security.client_env(bootstrap))  # the admin; `lanes up` gives each its own
    typer.echo("Point the stack at it:")
    typer.echo("  export " + " ".join(f"{k}={v}" for k, v in env.items()))
    try:
        wait_for_stop_signal()
    finally:
        stop()


@kafka_app.command("acls")
def kafka_acls(
    apply: bool = typer.Option(False, "--apply", help="create them on the cluster (as admin)"),
) -> None:
    """Every principal's rights, derived from the component registry and the topics (under
    LANES_TOPIC_PREFIX / LANES_GROUP_PREFIX): printed as a table; --apply creates them."""
    from services.apps.kafka_acls import acl_rules, apply_rules, render_table
    from services.config.routes import load_routes

    settings = settings_from_env()
    rules = acl_rules(settings, load_routes(settings.routes_file))
    typer.echo(render_table(rules))
    if apply:
        try:
            count = apply_rules(settings, rules)
        except Exception as exc:
            typer.echo(f"could not apply the ACLs: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"applied {count} rules")


@s3_app.command("start")
def s3_start(
    port: int = 8333,
    bucket: str = "lanes",
    host: str = typer.Option("127.0.0.1", help="the address to serve on (this host's own)"),
) -> None:
    """Run SeaweedFS (built from its Go module on first use) as the local S3 server, on
    --host (loopback by default), until Ctrl-C. Point the stack at it with the variables it
    prints."""

    from services.storage.local_s3 import WeedProcess

    settings = settings_from_env()
    weed = WeedProcess(
        settings.storage.state_dir.resolve() / "seaweedfs",
        bucket=bucket,
        s3_port=port,
        random_ports=False,
        host=host,
    )
    weed.start()
    typer.echo(
        f"S3 answering on {weed.endpoint}, bucket {bucket!r}; log: {weed.log_path}\n"
        f"  export LANES_ARTIFACTS=s3://{bucket}/ LANES_S3_ENDPOINT_URL={weed.endpoint} "
        f"LANES_S3_ACCESS_KEY_ID={weed.access_key} "
        f"LANES_S3_SECRET_ACCESS_KEY={weed.secret_key}"
    )
    try:
        wait_for_stop_signal()
    finally:
        weed.stop()


@kafka_app.command("topics")
def kafka_topics() -> None:
    """Create every topic the stack needs and raise partition counts to the settings'
    (LANES_TOPIC_PARTITIONS, LANES_LANE_PARTITIONS[_BY_LANE]) where Kafka allows it."""
    from services.apps.supervisor import topic_specs
    from services.config.routes import load_routes
    from services.kafka.clients import resize_topics

    settings = settings_from_env()
    specs = topic_specs(settings, load_routes(settings.routes_file))
    changes = asyncio.run(resize_topics(settings, specs))
    width = max(len(c.topic) for c in changes)
    typer.echo(f"{'topic':<{width}}  had  wants  action")
    for c in changes:
        typer.echo(f"{c.topic:<{width}}  {c.had:>3}  {c.wanted:>5}  {c.action}")
    if any(c.action == "added" for c in changes):
        typer.echo(
            "partitions added: a job id's new records may hash to another partition than its "
            "earlier ones (a cancel racing its request); consumers pick the new partitions up "
            "within a metadata refresh"
        )
    refused = [c.topic for c in changes if c.action == "refused"]
    if refused:
        typer.echo(
            f"refused: {', '.join(refused)} are compacted and keyed by id: more partitions "
            "would move keys and split each one's history. Migrate instead (docs/kafka.md, "
            "'Raising partitions').",
            err=True,
        )
        raise typer.Exit(1)


@webhooks_app.command("replay")
def webhooks_replay(
    key: list[str] | None = typer.Option(None, help="JOB_ID:EVENT to replay (repeatable)"),
    all_: bool = typer.Option(False, "--all", help="replay every dead-lettered webhook"),
) -> None:
    """Send dead-lettered webhooks again (same webhook-id, fresh signature, attempts anew)."""
    from services.apps.webhook_replay import replay

    if not key and not all_:
        raise typer.BadParameter("name --key JOB_ID:EVENT (repeatable) or --all")
    sent = asyncio.run(replay(settings_from_env(), None if all_ else set(key or [])))
    for k in sent:
        typer.echo(f"replaying {k}")
    typer.echo(f"{len(sent)} webhook(s) queued for delivery")
    if key and len(sent) < len(set(key)):
        raise typer.Exit(1)


@alerts_app.command("rules")
def alerts_rules(
    out: Path | None = typer.Option(None, help="write here (default: stdout)"),
) -> None:
    """The Prometheus alerting rules for the routes file's lanes (LANES_ROUTES_FILE): SLO
    burn rates from each lane's `slo:`, and the fleet's alerts (docs/runbooks.md)."""
    from services.apps.alert_rules import render
    from services.config.routes import load_routes
    from services.config.settings import Settings

    text = render(load_routes(Settings().routes_file))
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(str(out))


@k8s_app.command("chart")
def k8s_chart() -> None:
    """Write the Helm chart's generated files (infra/helm/lanes/files/) from the component
    registry and the default routes file."""
    from services.apps.helm_chart import write_chart_files

    for path in write_chart_files():
        typer.echo(str(path))


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
    path = asyncio.run(run_ab(settings_from_env(), names, read_prompts(prompts), out, intent))
    typer.echo(f"report: {path.resolve()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
